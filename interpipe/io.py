"""Atomic output writing.

Every file and folder a stage produces is first written under a temporary name in the same
directory and then renamed into place, so an interrupted stage never leaves a half-written
output behind (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files owner-only
DIR_MODE = 0o777 & ~_umask()  # what mkdir() would give; mkdtemp alone makes folders owner-only


class OutputExistsError(FileExistsError):
    """Raised when a result would overwrite an existing output and ``overwrite`` is False."""


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``target`` once the block succeeds.

    On an exception the temporary folder is deleted and ``target`` is left untouched.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi")
    >>> (root / "out" / "a.txt").read_text()
    'hi'
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=True or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path`` that replaces it once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``{"a/b": value}``.

    >>> flatten_metrics({"ioi": {"accuracy": 1.0}, "seconds": 2})
    {'ioi/accuracy': 1.0, 'seconds': 2}
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name))
        else:
            out[name] = value
    return out


def check_finite(metrics: dict[str, Any], where: str = "metrics") -> None:
    """Raise ``ValueError`` naming every NaN/Inf number in a (nested) metrics dict."""
    bad: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{prefix}={value}")

    walk("", metrics)
    if bad:
        raise ValueError(f"non-finite values in {where}: {', '.join(bad)}")


def write_json(path: str | os.PathLike, obj: Any, allow_nonfinite: bool = False) -> Path:
    """Write ``obj`` as pretty JSON atomically; NaN/Inf are refused unless allowed."""
    path = Path(path)
    if not allow_nonfinite and isinstance(obj, dict):
        check_finite(obj, where=str(path))
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=allow_nonfinite)
    _write_bytes_atomic(path, (text + "\n").encode())
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    path = Path(path)
    _write_bytes_atomic(path, text.encode())
    return path


def write_frame(path: str | os.PathLike, frame: "Any") -> Path:
    """Write a pandas DataFrame atomically as Parquet or CSV, chosen by the suffix."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"unsupported table suffix {path.suffix!r}: use .parquet or .csv")
    with atomic_file(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def save_figure(fig: "Any", path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
