"""Batched activation patching vs TransformerLens's patching functions, measured in one run.

    python benchmarks/patching.py                      # toy GPT-2 + GPT-2-small-shaped random model
    python benchmarks/patching.py --toy outputs/models/toy --n 16 --out bench.json
    python benchmarks/patching.py --models smollm2 --n 8   # SmolLM2-135M (outputs/models/smollm2), all 270 heads
    python benchmarks/patching.py --models smollm2 --n 64 --device cuda --dtype bfloat16   # both sides in bf16
    python benchmarks/patching.py --models smollm2 --n 64 --device cuda --memory-mb 8192     # a fixed activation budget

For each model, the same IOI prompts (one token length, as TransformerLens needs) are patched
clean → corrupted with ``interpipe.circuits`` and with ``transformer_lens.patching``'s
``get_act_patch_resid_pre`` (layer × position) and ``get_act_patch_attn_head_out_all_pos``
(layer × head), on the same ``TransformerBridge``, with the same metric (normalised logit
difference at the answer position). Both results are checked to agree (``atol=1e-4``), then the
throughput in patched examples per second (cells × prompts / seconds) and the ratio are printed.
Target from the issue: ≥ 5× on CPU. On the GPT-2-small-shaped model a full TransformerLens grid
takes many minutes on a CPU (one full forward per cell), so by default it runs an evenly spread
subset of ``--tl-cells`` cells (``index_df``); every TransformerLens cell costs the same forward,
so its per-cell throughput is representative (``--tl-cells 0`` runs the whole grid).

Where the speed comes from: many patches share one batched forward; prompts run through the blocks
before the first patched one once; only answer positions go through ``ln_final`` and the
unembedding; and cells at positions before the first clean/corrupted difference are exact no-ops
(identical activations in both runs of a causal model) and are not run. TransformerLens runs one
full forward (with autograd bookkeeping) per cell.

The "toy" model is the trained toy GPT-2 when ``--toy`` names its folder, else a random model of
the toy's shape; "gpt2-small-shape" is a random GPT-2 with 12 layers, 12 heads, d_model 768 and
GPT-2's vocabulary size (speed does not depend on the weights); "smollm2" is the real
SmolLM2-135M folder written by the ``model`` stage (``--smollm2``; Llama architecture, 30 layers x
9 query / 3 KV heads = 270 heads), patched on the layer x head grid only, with the IOI prompts
whose clean and corrupted prompts tokenize to the most common length. Both sides run under
``torch.inference_mode()``, so neither pays for autograd it does not use. Without CUDA the clock
is the process's CPU time, so other jobs on a shared machine do not distort the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

CLOCK = time.perf_counter


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best time of ``repeats`` runs (the first run is timed too: these runs are long)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = CLOCK()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, CLOCK() - start)
    return best, out


def random_model(folder: Path, tokenizer, n_layer: int, n_head: int, d_model: int, vocab: int) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=max(vocab, len(tokenizer)), n_positions=128, n_embd=d_model, n_layer=n_layer,
                        n_head=n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["GPT2LMHeadModel"]
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ioi_prompts(n: int) -> list[dict]:
    """``n`` IOI records of the most common word length."""
    import random
    from collections import Counter

    from interpipe.data import tasks

    rng = random.Random("bench-patching")
    rows = [tasks.ioi(rng) for _ in range(40 * n)]
    length = Counter(len(r["prompt"].split()) for r in rows).most_common(1)[0][0]
    return [r for r in rows if len(r["prompt"].split()) == length][:n]


def one_length_batch(bridge, rows: list[dict]):
    """The prompts whose clean and corrupted token lengths match, cut to the most common length."""
    from collections import Counter

    from interpipe.circuits import make_batch

    fields = lambda rs: ([r["prompt"] for r in rs], [r["corrupted_prompt"] for r in rs],  # noqa: E731
                         [r["answer"] for r in rs], [r["foil"] for r in rs])
    kept = [r for r in rows if make_batch(bridge, *fields([r]), on_mismatch="skip").size == 1]
    lengths = [make_batch(bridge, *fields([r])).n_pos for r in kept]
    if not lengths:
        raise SystemExit("no IOI prompt tokenizes to equal clean and corrupted lengths: raise --n")
    common = Counter(lengths).most_common(1)[0][0]
    return make_batch(bridge, *fields([r for r, n in zip(kept, lengths) if n == common]))


AGREE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}  # max |ours - TL| of the normalised metric per dtype


def activation_budget(device: str, memory_mb: float) -> float:
    """The activation memory (MB) one batched forward of ours may use: ``memory_mb`` when positive; else,
    on CUDA, half of the memory the device has free (the batches fill the GPU), on a CPU 1024 MB."""
    if memory_mb > 0:
        return memory_mb
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free / 2**20 / 2
    return 1024.0


def bench_model(name: str, folder: Path, rows: list[dict], repeats: int, device: str, tl_cells: int,
                heads_only: bool = False, dtype: str = "float32", memory_mb: float = 0.0) -> list[dict]:
    import itertools

    import numpy as np
    import pandas as pd
    from transformer_lens import patching as tlp

    from interpipe.circuits import load_bridge, patch_head_out_all_pos, patch_resid_pre, task_metric

    bridge = load_bridge(folder, device=device, dtype=dtype)  # one bridge: both sides run in the same dtype
    batch = one_length_batch(bridge, rows)
    metric = task_metric(bridge, batch)
    rows_idx = torch.arange(batch.size, device=batch.answer_pos.device)

    def tl_metric(logits):
        return metric(logits[rows_idx, batch.answer_pos])

    memory = activation_budget(device, memory_mb)
    grids = [("resid_pre (layer x pos)", patch_resid_pre, tlp.get_act_patch_resid_pre, ("layer", "pos")),
             ("head out, all pos (layer x head)", patch_head_out_all_pos, tlp.get_act_patch_attn_head_out_all_pos,
              ("layer", "head"))][1 if heads_only else 0:]
    out = []
    for label, ours, theirs, axes in grids:
        def run_ours():
            with torch.inference_mode():
                return ours(bridge, batch, metric=metric, memory_mb=memory).values

        t_ours, v_ours = timed(run_ours, repeats)
        sizes = tuple(v_ours.shape)
        cells = v_ours.numel()
        # TransformerLens runs one full forward per cell; with tl_cells set, time an evenly spread
        # subset of cells (index_df) and compare per-cell throughput.
        index = pd.DataFrame(list(itertools.product(*(range(n) for n in sizes))), columns=list(axes))
        if tl_cells and tl_cells < cells:
            index = index.iloc[np.linspace(0, cells - 1, tl_cells).round().astype(int)].reset_index(drop=True)

        def run_theirs():
            with torch.inference_mode():
                _, cache = bridge.run_with_cache(batch.clean_tokens)  # TransformerLens needs the clean cache
                return theirs(bridge, batch.corrupted_tokens, cache, tl_metric,
                              index_axis_names=None, index_df=index)

        t_tl, v_tl = timed(run_theirs, 1)
        picked = v_ours[tuple(torch.tensor(index[a].values) for a in axes)]
        diff = float((picked - v_tl.float().cpu()).abs().max())
        row = {"model": name, "grid": label, "cells": cells, "tl_cells": len(index), "prompts": batch.size,
               "pos": batch.n_pos, "shared_prefix": batch.shared_prefix(), "ours_s": t_ours,
               "transformer_lens_s": t_tl, "ours_examples_per_s": cells * batch.size / t_ours,
               "tl_examples_per_s": len(index) * batch.size / t_tl, "max_abs_diff": diff, "agree": diff < AGREE[dtype],
               "dtype": dtype, "memory_mb": memory,
               "max_abs_value": float(picked.abs().max())}  # the compared values are not all zero
        row["speedup"] = row["ours_examples_per_s"] / row["tl_examples_per_s"]
        print(f"{name:18s} {label:34s} cells={cells:4d} (TL {len(index):4d}) ours {row['ours_examples_per_s']:9.1f} ex/s  "
              f"TL {row['tl_examples_per_s']:8.1f} ex/s  speedup {row['speedup']:5.1f}x  max|diff| {diff:.1e}",
              flush=True)
        out.append(row)
    return out


def main() -> None:
    global CLOCK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", default=None, help="trained toy model folder (default: random toy-shaped model)")
    parser.add_argument("--n", type=int, default=8, help="prompts per batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (best is kept)")
    parser.add_argument("--models", default="toy,gpt2-small-shape")
    parser.add_argument("--smollm2", default="outputs/models/smollm2", help="SmolLM2 model folder (models=smollm2)")
    parser.add_argument("--tl-cells", type=int, default=24,
                        help="cells TransformerLens runs on the larger models (0: all; the toy always runs all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(AGREE), help="both sides load the model in it")
    parser.add_argument("--memory-mb", type=float, default=0.0,
                        help="activation budget of one batched forward of ours; 0: half the free CUDA memory, 1024 on a CPU")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    CLOCK = time.perf_counter if args.device.startswith("cuda") else time.process_time
    from interpipe.models.toy import build_tokenizer

    rows = ioi_prompts(args.n)
    texts = [t for r in rows for t in (r["prompt"], r["corrupted_prompt"], r["answer"], r["foil"])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.toy:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.toy)
        else:
            tokenizer = build_tokenizer(texts)
        for name in args.models.split(","):
            if name == "toy":
                folder = Path(args.toy) if args.toy else random_model(Path(tmp) / "toy", tokenizer, 4, 4, 128, 0)
            elif name == "gpt2-small-shape":
                folder = random_model(Path(tmp) / "gpt2s", tokenizer, 12, 12, 768, 50257)
            elif name == "smollm2":
                folder = Path(args.smollm2)
                if not (folder / "config.json").exists():
                    raise SystemExit(f"no SmolLM2 model folder at {folder}: run `python -m stages.model model=smollm2 "
                                     f"hydra.run.dir={folder}` or pass --smollm2 <folder>")
            else:
                raise SystemExit(f"unknown model {name!r}: use toy, gpt2-small-shape or smollm2")
            results += bench_model(name, folder, rows, args.repeats, args.device, 0 if name == "toy" else args.tl_cells,
                                   heads_only=name == "smollm2", dtype=args.dtype, memory_mb=args.memory_mb)
    print(f"clock: {'wall' if CLOCK is time.perf_counter else 'process CPU'} time; torch threads: {torch.get_num_threads()}")
    for r in results:
        print(f"  {r['model']:18s} {r['grid']:34s} speedup {r['speedup']:.1f}x (target >= 5x)  agree={r['agree']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
