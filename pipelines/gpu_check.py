"""The project's GPU check: every SmolLM2 stage of the default pipeline on CUDA in float32 and bfloat16,
each compared with the CPU pipeline's numbers; the speed benchmarks on CUDA; the GPU tests. One table.

    make gpu-check                                  # on a machine with one CUDA GPU, after `make run`
    python pipelines/gpu_check.py --jobs 4          # the same (stages run four at a time on the GPU)
    python pipelines/gpu_check.py --device cpu --dtypes float32 --stages evaluate@smollm2 \\
        --no-benchmarks --no-tests                  # a rehearsal of the script on a CPU

Each stage is run by the command ``dvc.yaml`` gives it, with ``device``, ``dtype`` and
``logger=none`` added, its ``hydra.run.dir`` moved under ``outputs/gpu_check/<dtype>/`` and no model
exports (``quantize.export=[]``): nothing of the CPU pipeline's outputs is touched. Its quoted numbers
(``headline.json``; ``metrics.json`` where a stage writes no headline) are compared with the CPU run's (``outputs/<...>/headline.json``, written by
``make run``; without them the deviation reads "no CPU numbers"):

- float32 within rtol 1e-3 / atol 1e-4 (:data:`TOLERANCES`): CUDA float32 matmuls do not use TF32
  unless asked, so only summation order differs, and a near-tie (a ranking, a chosen edit) may still
  flip: the table lists the largest deviation so a reader can see which;
- bfloat16 within rtol 0.1 / atol 0.05: 8 significant bits move losses in their third digit and can
  move discrete choices; studies that train every weight (LN removal) refuse bfloat16 by design and
  are listed as "refused".

Costs (seconds, memory, throughput) are never compared. The benchmarks (``benchmarks/patching.py``,
``benchmarks/attribution.py``) and ``pytest -m gpu`` run after the stages. The exit status is 0 when
every stage passed or was refused by design, the benchmarks ran and the tests passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = "outputs/gpu_check"
STAGES = r"@smollm2$|@[a-z_]+-smollm2$"  # SmolLM2 itself, not its quantized exports (they are CPU pipeline inputs)
SKIP = ("model@", "prepare")  # inputs, built by the CPU pipeline
TOLERANCES = {"float32": (1e-3, 1e-4), "bfloat16": (0.1, 0.05), "float16": (0.1, 0.05)}  # (rtol, atol)
REFUSED = "use dtype=float32"  # what a study that refuses half precision says


@dataclass
class Check:
    """One row of the table."""

    name: str
    dtype: str = ""
    status: str = "not run"
    seconds: float = 0.0
    gpu_mb: float | None = None
    deviation: str = ""
    detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "refused")


def stage_commands(pattern: str = STAGES) -> dict[str, str]:
    """``{stage: command}`` of the default pipeline's stages whose name matches ``pattern``."""
    from pipelines.repro import dag

    from dvc.repo import Repo

    order, _ = dag(ROOT)
    with Repo(str(ROOT)) as repo:
        cmds = {s.addressing: s.cmd for s in repo.index.stages}
    return {name: " ".join(str(cmds[name]).split()) for name in order
            if re.search(pattern, name) and not name.startswith(SKIP)}


def device_command(cmd: str, device: str, dtype: str) -> tuple[list[str], str]:
    """The stage command on ``device`` in ``dtype`` writing under ``outputs/gpu_check/<dtype>/``:
    (argv, its CPU run's output folder).

    >>> argv, cpu = device_command("pipelines/python -m stages.quantize model=smollm2 quantize.export=[rtn-w8a8] "
    ...                            "hydra.run.dir=outputs/quantize/smollm2", "cuda", "bfloat16")
    >>> argv[3:], cpu
    (['model=smollm2', 'hydra.run.dir=outputs/gpu_check/bfloat16/quantize/smollm2', 'quantize.export=[]', 'device=cuda', 'dtype=bfloat16', 'logger=none'], 'outputs/quantize/smollm2')
    """
    argv, cpu_dir = [], ""
    for token in shlex.split(cmd):
        if token.startswith("hydra.run.dir="):
            cpu_dir = token.split("=", 1)[1]
            token = f"hydra.run.dir={OUT}/{dtype}/{cpu_dir.removeprefix('outputs/')}"
        elif token.startswith(("quantize.export=", "device=", "dtype=", "logger=")):
            continue
        argv.append(token)
    extra = ["quantize.export=[]"] if "stages.quantize" in cmd else []
    return argv + extra + [f"device={device}", f"dtype={dtype}", "logger=none"], cpu_dir


def largest_deviation(cpu: dict, gpu: dict, rtol: float, atol: float) -> tuple[str, bool, list[str]]:
    """The quoted number furthest from the CPU run's (in units of its tolerance), whether every one is
    within tolerance, and the keys that are not (costs aside; a key in one run only counts as outside).

    >>> largest_deviation({"a": 1.0, "b": 2.0, "t_seconds": 1}, {"a": 1.0005, "b": 2.5, "t_seconds": 9}, 1e-3, 1e-4)
    ('b: 2 -> 2.5 (238x tol)', False, ['b'])
    """
    from interpipe.report.reproduce import differences, is_cost

    outside = [row["key"] for row in differences({"": cpu}, {"": gpu}, rtol, atol)]  # the one tolerance rule
    worst, worst_ratio = "", -1.0
    for key in sorted(set(cpu) & set(gpu)):
        a, b = cpu[key], gpu[key]
        if is_cost(key) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            continue
        ratio = 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b) / (atol + rtol * abs(a))
        if ratio > worst_ratio:
            worst, worst_ratio = f"{key}: {a:.4g} -> {b:.4g} ({ratio:.3g}x tol)", ratio
    return worst, not outside, outside


def _quoted(folder: Path) -> dict | None:
    """The numbers a stage quotes: its ``headline.json`` files, or its ``metrics.json`` where it writes no
    headline (evaluate); None when there are none."""
    from interpipe.report.reproduce import flatten

    files = sorted(folder.rglob("headline.json")) or [p for p in [folder / "metrics.json"] if p.exists()]
    if not files:
        return None
    return {f"{p.relative_to(folder).parent.as_posix()}/{k}".lstrip("./"): v
            for p in files for k, v in flatten(json.loads(p.read_text())).items()}


def run_stage(name: str, cmd: str, device: str, dtype: str, timeout: int) -> Check:
    argv, cpu_dir = device_command(cmd, device, dtype)
    out_dir = ROOT / next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1]
    check, start = Check(name, dtype), time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        check.status, check.seconds = f"timeout {timeout}s", time.perf_counter() - start
        return check
    check.seconds = time.perf_counter() - start
    record = out_dir / "run.json"
    if record.exists():
        check.gpu_mb = json.loads(record.read_text()).get("peak_gpu_memory_mb")
    if done.returncode != 0:
        refused = REFUSED in done.stderr
        check.status = "refused" if refused and dtype != "float32" else f"rc {done.returncode}"
        check.detail = done.stderr.strip().splitlines()[-3:]
        return check
    return _compare(check, ROOT / cpu_dir, out_dir, dtype)


def _compare(check: Check, cpu_dir: Path, out_dir: Path, dtype: str) -> Check:
    cpu, gpu = _quoted(cpu_dir), _quoted(out_dir)
    if gpu is None:
        check.status, check.deviation = "pass", "no numbers written"
    elif cpu is None:
        check.status, check.deviation = "pass", f"no CPU numbers in {cpu_dir.relative_to(ROOT)} (run make run first)"
    else:
        rtol, atol = TOLERANCES[dtype]
        check.deviation, within, outside = largest_deviation(cpu, gpu, rtol, atol)
        check.status = "pass" if within else f"{len(outside)} outside tol"
        check.detail = outside[:8]
    return check


def run_command(name: str, argv: list[str], timeout: int) -> Check:
    check, start = Check(name), time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        check.status = "pass" if done.returncode == 0 else f"rc {done.returncode}"
        check.detail = (done.stdout + done.stderr).strip().splitlines()[-6:]
    except subprocess.TimeoutExpired:
        check.status = f"timeout {timeout}s"
    check.seconds = time.perf_counter() - start
    return check


def extra_checks(device: str, benchmarks: bool, tests: bool) -> list[tuple[str, list[str]]]:
    py, out = sys.executable, f"{OUT}/benchmarks"
    runs = []
    if benchmarks:
        runs += [("benchmark patching", [py, "benchmarks/patching.py", "--models", "toy,gpt2-small-shape,smollm2",
                                         "--n", "64", "--device", device, "--out", f"{out}/patching.json"]),
                 ("benchmark attribution", [py, "benchmarks/attribution.py", "--models", "toy", "smollm2",
                                            "--out", f"{out}/attribution.json"])]
    if tests:
        runs.append(("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:randomly"]))
    return runs


def print_table(checks: list[Check]) -> None:
    header = f"{'check':34} {'dtype':9} {'status':16} {'seconds':>8} {'GPU MiB':>8}  largest deviation from the CPU numbers"
    print(header)
    print("-" * len(header))
    for c in checks:
        gpu = "" if c.gpu_mb is None else f"{c.gpu_mb:.0f}"
        print(f"{c.name:34} {c.dtype:9} {c.status:16} {c.seconds:8.1f} {gpu:>8}  {c.deviation}")
        for line in c.detail if not c.ok else []:
            print(f"{'':36}{line[:160]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(TOLERANCES))
    parser.add_argument("--stages", default=STAGES, help="regular expression over stage names (default: SmolLM2's)")
    parser.add_argument("--jobs", type=int, default=4, help="stages run at once (they share the GPU)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds one stage may take")
    parser.add_argument("--no-benchmarks", dest="benchmarks", action="store_false")
    parser.add_argument("--no-tests", dest="tests", action="store_false")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible: run this on a GPU machine, or rehearse with --device cpu")
    commands = stage_commands(args.stages)
    if not commands:
        parser.error(f"--stages {args.stages!r} matches no stage of dvc.yaml")
    jobs = [(name, cmd, dtype) for dtype in args.dtypes for name, cmd in commands.items()]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        checks = list(pool.map(lambda j: run_stage(j[0], j[1], args.device, j[2], args.timeout), jobs))
    checks += [run_command(name, cmd, 600) for name, cmd in extra_checks(args.device, args.benchmarks, args.tests)]
    print_table(checks)
    print(f"\n{sum(c.ok for c in checks)} of {len(checks)} checks passed in {time.perf_counter() - start:.0f} s "
          f"on {args.device}; tolerances (rtol, atol): {TOLERANCES}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
