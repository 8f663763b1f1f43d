"""Exact edge patching (``interpipe.circuits.edges``) vs the same computation with TransformerLens hooks.

    python benchmarks/edge_patching.py                          # toy-shaped random GPT-2
    python benchmarks/edge_patching.py --toy outputs/models/toy --n 8
    python benchmarks/edge_patching.py --models smollm2 --n 8   # SmolLM2-135M, 70,651 edges

The same edge circuits (random edge sets at MIB's budgets, 0.1 % … 50 % of all edges, as the circuits
stage's random floor) are evaluated on the same IOI prompts of one ``TransformerBridge`` two ways:

* ours, :func:`interpipe.circuits.edges.evaluate_circuits`: many circuits share one forward (the
  prompts repeated per circuit), only positions after the clean/corrupted shared prefix are rebuilt,
  and each receiver adds the sum over only the senders whose edges it changes (or the running total
  minus the few it keeps);
* the peer, written with TransformerLens hooks as MIB's ``evaluate_graph`` does it: per circuit a
  corrupted forward caching every sender's output, then a clean forward whose receiver hooks add
  ``einsum(1 − in_graph, corrupted − clean)`` over every earlier sender at every position, full logits.

Both run under ``torch.inference_mode()``. The answer-position logit differences are checked to agree
(``atol=1e-3``), then circuits per second and the ratio are printed. Without CUDA the clock is the
process's CPU time, so other jobs on a shared machine do not distort the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import patching as house  # benchmarks/patching.py (this folder is on sys.path): the same prompts, models and clock
from patching import ioi_prompts, one_length_batch, random_model, timed


def tl_hooks_logit_diffs(bridge, graph, batch, circuits: torch.Tensor) -> torch.Tensor:
    """The peer: TransformerLens hooks, two full forwards per circuit (MIB's evaluate_graph). ``[circuit, prompt]``."""
    from interpipe.circuits.edges.hooks import edge_hooks, receiver_groups
    from interpipe.circuits.metrics import logit_diff

    rows = torch.arange(batch.size)
    out = []
    with edge_hooks(bridge), torch.inference_mode():
        for keep in circuits:
            moved = (~keep & graph.allowed).float()  # (receiver, sender): edges set to their corrupted value
            diff = torch.zeros(*batch.clean_tokens.shape, graph.n_senders, bridge.cfg.d_model)  # (batch, pos, sender, d)

            def sender(col, sign, heads=False, layer=0):
                def hook(act, hook):
                    value = torch.einsum("bphk,hkd->bphd", act, bridge.blocks[layer].attn.W_O) if heads else act[:, :, None]
                    diff[:, :, col:col + value.shape[2]] += sign * value
                    return act
                return hook

            def senders(sign):
                hooks = [("blocks.0.hook_resid_pre", sender(0, sign))]
                for layer in range(graph.n_layers):
                    hooks.append((f"blocks.{layer}.attn.hook_z", sender(graph.sender_columns(layer, "head")[0], sign, True, layer)))
                    hooks.append((f"blocks.{layer}.hook_mlp_out", sender(graph.sender_columns(layer, "mlp")[0], sign)))
                return hooks

            def receiver(rows_, prior):
                w = moved[rows_, :prior]  # (receiver, prior sender)

                def hook(act, hook):
                    update = torch.einsum("bpsd,vs->bpvd", diff[:, :, :prior], w)
                    return act + (update if act.ndim == 4 else update[:, :, 0])
                return hook

            receivers = [(name, receiver(r, graph.prior_senders(layer, kind))) for name, layer, kind, r in receiver_groups(graph)]
            bridge.run_with_hooks(batch.corrupted_tokens, fwd_hooks=senders(+1.0))
            logits = bridge.run_with_hooks(batch.clean_tokens, fwd_hooks=senders(-1.0) + receivers)  # (batch, pos, vocab)
            out.append(logit_diff(logits[rows, batch.answer_pos], batch.answer_ids, batch.foil_ids))
    return torch.stack(out)


def bench_model(name: str, folder: Path, rows: list[dict], repeats: int, device: str, seeds: int) -> dict:
    from interpipe.circuits import load_bridge
    from interpipe.circuits.bridge import architecture
    from interpipe.circuits.edges import EdgeGraph, MIB_BUDGETS, edge_counts, evaluate_circuits, random_circuits, sender_outputs
    from interpipe.circuits.metrics import logit_diff

    bridge = load_bridge(folder, device=device)
    batch = one_length_batch(bridge, rows)
    graph = EdgeGraph.from_spec(architecture(bridge))
    counts = edge_counts(graph.n_edges, MIB_BUDGETS)
    circuits = torch.cat([random_circuits(graph.allowed, counts, seed) for seed in range(seeds)])
    prefix = min(batch.shared_prefix(), int(batch.answer_pos.min()))
    score = lambda logits: logit_diff(logits, batch.answer_ids, batch.foil_ids)  # noqa: E731

    def run_ours():
        with torch.inference_mode():
            corrupted, _ = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
            return evaluate_circuits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, circuits, score,
                                     1024.0, prefix=prefix)

    t_ours, v_ours = timed(run_ours, repeats)
    t_tl, v_tl = timed(lambda: tl_hooks_logit_diffs(bridge, graph, batch, circuits), 1)
    diff = float((v_ours.float().cpu() - v_tl.float().cpu()).abs().max())
    row = {"model": name, "edges": graph.n_edges, "circuits": len(circuits), "prompts": batch.size, "pos": batch.n_pos,
           "shared_prefix": prefix, "ours_s": t_ours, "transformer_lens_s": t_tl,
           "ours_circuits_per_s": len(circuits) / t_ours, "tl_circuits_per_s": len(circuits) / t_tl,
           "max_abs_diff": diff, "agree": diff < 1e-3, "max_abs_value": float(v_tl.abs().max())}
    row["speedup"] = row["ours_circuits_per_s"] / row["tl_circuits_per_s"]
    print(f"{name:18s} edges={graph.n_edges:6d} circuits={len(circuits):3d} prompts={batch.size:2d} ours "
          f"{row['ours_circuits_per_s']:7.2f} circuits/s  TL hooks {row['tl_circuits_per_s']:7.2f} circuits/s  "
          f"speedup {row['speedup']:5.1f}x  max|diff| {diff:.1e}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", default=None, help="trained toy model folder (default: random toy-shaped model)")
    parser.add_argument("--n", type=int, default=8, help="prompts per batch")
    parser.add_argument("--seeds", type=int, default=1, help="random circuits at each of MIB's 9 budgets, this many draws")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (best is kept)")
    parser.add_argument("--models", default="toy")
    parser.add_argument("--smollm2", default="outputs/models/smollm2", help="SmolLM2 model folder (models=smollm2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    house.CLOCK = time.perf_counter if args.device.startswith("cuda") else time.process_time  # read by ``timed``
    import tempfile

    from interpipe.models.toy import build_tokenizer

    rows = ioi_prompts(args.n)
    texts = [t for r in rows for t in (r["prompt"], r["corrupted_prompt"], r["answer"], r["foil"])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "toy":
                folder = Path(args.toy) if args.toy else random_model(Path(tmp) / "toy", build_tokenizer(texts), 4, 4, 128, 0)
            elif name == "smollm2":
                folder = Path(args.smollm2)
                if not (folder / "config.json").exists():
                    raise SystemExit(f"no SmolLM2 model folder at {folder}: run the model stage or pass --smollm2 <folder>")
            else:
                raise SystemExit(f"unknown model {name!r}: use toy or smollm2")
            results.append(bench_model(name, folder, rows, args.repeats, args.device, args.seeds))
    print(f"clock: {'wall' if house.CLOCK is time.perf_counter else 'process CPU'} time; torch threads: {torch.get_num_threads()}")
    for r in results:
        print(f"  {r['model']:18s} exact edge patching speedup {r['speedup']:.1f}x over TransformerLens hooks  agree={r['agree']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
