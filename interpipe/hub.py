"""Reaching the Hugging Face hub: fail in seconds, with a fix, when it cannot be reached."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


class HubUnreachableError(RuntimeError):
    """The hub cannot be reached and the requested model or dataset is not cached locally."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` counts as unreachable without trying.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(kind: str, name: str, cause: Exception | None = None) -> HubUnreachableError:
    """The message users get when a hub name cannot be resolved offline."""
    example = "model.source=/path/to/folder" if kind == "model" else "data.hub=[{name: /path/to/folder}]"
    hint = (
        f"cannot load {kind} {name!r}: the Hugging Face hub ({hub_endpoint()}) is unreachable "
        f"and {name!r} is not in the local HF cache. Either download it on a machine with network "
        f"(`huggingface-cli download {name} --local-dir /path/to/{name.split('/')[-1]}`), copy the "
        f"folder here and pass its path (e.g. `{example}`), or set HF_HOME to a "
        f"cache that holds it."
    )
    if cause is not None:
        hint += f" (underlying error: {type(cause).__name__}: {str(cause).splitlines()[0][:200]})"
    return HubUnreachableError(hint)
