"""`make`'s uv installs use the certificate bundle pip is configured with (uv does not read pip's settings)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _install_commands(tmp_path, **env: str) -> list[str]:
    """The uv install lines `make install` would run (``make -n``: nothing runs) under ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "PIP_CERT", "PIP_CONFIG_FILE")}
    base["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file: not the machine's own settings
    done = subprocess.run(["make", "-n", "-B", "install", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**base, **env})
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "uv pip install" in line]


@pytest.mark.parametrize("source", ["env", "config"])
def test_pips_certificate_reaches_uv(tmp_path, source):
    if source == "env":
        env = {"PIP_CERT": "/corp/ca.pem"}
    else:
        (tmp_path / "pip.conf").write_text("[global]\ncert = /corp/ca.pem\n")
        env = {"PIP_CONFIG_FILE": str(tmp_path / "pip.conf")}
    lines = _install_commands(tmp_path, **env)
    assert lines and all(line.startswith("SSL_CERT_FILE=/corp/ca.pem ") for line in lines), lines


def test_an_explicit_ssl_cert_file_and_no_setting_are_left_alone(tmp_path):
    assert not any("SSL_CERT_FILE=" in line for line in _install_commands(tmp_path, SSL_CERT_FILE="/mine.pem",
                                                                          PIP_CERT="/corp/ca.pem"))
    assert not any("SSL_CERT_FILE=" in line for line in _install_commands(tmp_path))
