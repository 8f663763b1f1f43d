"""Same config, same numbers, within a stated tolerance: compare two runs' metrics.

    python -m interpipe.report.reproduce outputs other/outputs     # two output folders
    python -m interpipe.report.reproduce --dvc HEAD                 # this workspace against a commit's metrics

What is promised. A stage run twice with the same config on the same machine gives the same numbers
within :data:`RTOL` (relative) and :data:`ATOL` (absolute). Not bit for bit: CPU BLAS kernels may sum in
another order from one process to the next (memory alignment picks the kernel; the thread count, fixed
per stage, changes it too), so a logit difference can move in its seventh digit (-0.07615627 vs
-0.07615646, seen between two processes). Training is made deterministic where it decides the weights
(the toy trains on one thread); what follows inherits only last-bit noise. On another machine or
device, larger differences are expected; the GPU check states its own tolerances.

Costs (seconds, memory, throughput) are left out: they differ between any two runs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

RTOL = 1e-4  # relative: float32 sums in another order move the 6th-7th significant digit
ATOL = 1e-6  # absolute: for values near 0 (differences of probabilities, correlations)
COSTS = re.compile(r"seconds|latency|memory|per_second|speedup|throughput|_mb$|timestamp")
METRIC_FILES = ("metrics.json", "headline.json")


def is_cost(key: str) -> bool:
    """A cost, not a result: differs between any two runs.

    >>> [is_cost(k) for k in ["stage_seconds", "patching/examples_per_second", "ioi/logit_diff"]]
    [True, True, False]
    """
    return bool(COSTS.search(key))


def same_value(a: Any, b: Any, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Equal within the tolerance (numbers), or equal (anything else); NaN equals NaN.

    >>> same_value(-0.07615627, -0.07615646), same_value(0.5, 0.51), same_value(float("nan"), float("nan"))
    (True, False, True)
    """
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return a == b


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as ``{"a/b/0": value}``.

    >>> flatten({"a": {"b": [1, 2]}, "c": 3})
    {'a/b/0': 1, 'a/b/1': 2, 'c': 3}
    """
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}/").items()}
    if isinstance(data, list):
        return {k: v for i, value in enumerate(data) for k, v in flatten(value, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): data}


def metric_files(root: str | Path) -> dict[str, dict[str, Any]]:
    """Every metrics/headline JSON under ``root``, flattened, by its path relative to ``root``."""
    root = Path(root)
    return {path.relative_to(root).as_posix(): flatten(json.loads(path.read_text()))
            for name in METRIC_FILES for path in sorted(root.rglob(name))}


def differences(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], rtol: float = RTOL,
                atol: float = ATOL) -> list[dict[str, Any]]:
    """Every result (costs aside) that differs beyond the tolerance, or is in one run only."""
    out = []
    for file in sorted(set(first) | set(second)):
        a, b = first.get(file, {}), second.get(file, {})
        for key in sorted(set(a) | set(b)):
            if is_cost(key):
                continue
            if key not in a or key not in b or not same_value(a[key], b[key], rtol, atol):
                out.append({"file": file, "key": key, "first": a.get(key, "(absent)"), "second": b.get(key, "(absent)")})
    return out


def dvc_differences(rev: str, rtol: float = RTOL, atol: float = ATOL, cwd: str | Path = ".") -> list[dict[str, Any]]:
    """``dvc metrics diff rev`` (this workspace against ``rev``'s metrics), costs aside, beyond the tolerance."""
    done = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--json", rev], capture_output=True,
                          text=True, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"dvc metrics diff {rev} failed: {done.stderr.strip()[-500:]}")
    diff = json.loads(done.stdout or "{}")
    out = []
    for file, keys in sorted(diff.items()):
        for key, change in sorted(flatten_changes(keys).items()):
            old, new = change.get("old"), change.get("new")
            if not is_cost(key) and not same_value(old, new, rtol, atol):
                out.append({"file": file, "key": key, "first": old, "second": new})
    return out


def flatten_changes(keys: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """DVC's nested ``{key: {old, new, diff}}`` as ``{"a/b": {old, new, diff}}``."""
    out = {}
    for key, value in keys.items():
        if isinstance(value, dict) and ("old" in value or "new" in value):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            out.update(flatten_changes(value, f"{prefix}{key}/"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="two output folders to compare")
    parser.add_argument("--dvc", metavar="REV", help="compare this workspace's metrics with REV's (dvc metrics diff)")
    parser.add_argument("--rtol", type=float, default=RTOL)
    parser.add_argument("--atol", type=float, default=ATOL)
    args = parser.parse_args(argv)
    if bool(args.dvc) == (len(args.runs) == 2) or (args.runs and len(args.runs) != 2):
        parser.error("give two output folders, or --dvc REV")
    found = (dvc_differences(args.dvc, args.rtol, args.atol) if args.dvc else
             differences(metric_files(args.runs[0]), metric_files(args.runs[1]), args.rtol, args.atol))
    for row in found:
        print(f"{row['file']}  {row['key']}: {row['first']} -> {row['second']}")
    print(f"{len(found)} result(s) differ beyond rtol={args.rtol:g}, atol={args.atol:g} (costs left out)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
