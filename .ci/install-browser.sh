#!/usr/bin/env sh
# Install Debian's Chromium for the report page's browser test (tests/report/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or sudo) and apt.
set -eu
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version
