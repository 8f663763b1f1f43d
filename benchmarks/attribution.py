"""Attribution speed, side by side with Captum (and inseq when installed), in one run.

    python benchmarks/attribution.py                       # toy GPT-2 + MiniLM, lengths 32 and 128
    python benchmarks/attribution.py --lengths 32 --n 8 --out bench.json
    python benchmarks/attribution.py --models smollm2 --lengths 32 --n 8 --ig-n 1 --repeats 1   # the real LM

For each model and sequence length, every method runs on the same model and the same inputs
(random non-special token ids; ``--n`` examples per batch, ``--ig-n`` for integrated gradients,
whose 50 interpolation steps fill the internal batch already): examples per second here and
for Captum's equivalent at equal settings (``Saliency``, ``InputXGradient``,
``IntegratedGradients`` with 50 Gauss-Legendre steps and the same internal batch size, all on
the word embeddings, same targets), and the ratios. Captum gets the forward function a user
writes, ``model(inputs_embeds=e, attention_mask=m).logits`` read at the scored position.
Targets from the issue:

- NormXLogit at least 100x the throughput of integrated gradients with 50 steps (reported at
  the same batch size and at ``--n-single``: without a backward pass NormXLogit affords much
  larger batches, the paper's cost argument);
- each gradient method here at least as fast as Captum's (ratio >= 1);
- attributing every next-token target of a sequence at least 3x faster than Captum's
  ``LLMGradientAttribution`` looping over targets (gradient x input, causal LM only).

The "toy GPT-2" is the toy architecture (``ToySettings`` shape, random weights, context 128 so
both lengths fit); MiniLM is the real all-MiniLM-L6-v2 with a (random) classification head.
Speed does not depend on the weights.

inseq 0.7.1 pins ``typeguard<=2.13.3`` while transformer-lens needs ``typeguard>=4.2``, so it is
not a project dependency; to include it, install it beside the venv and put it on the path::

    pip install --target /tmp/inseq --no-deps inseq==0.7.1 typeguard==2.13.3 treescope==0.1.10
    PYTHONPATH=/tmp/inseq python benchmarks/attribution.py

It is compared where it applies, on a causal LM attributing every generated step (its
``input_x_gradient``); without it the benchmark skips it and says so. Each timing is the best of ``--repeats`` runs after a
warm-up; expensive ones (IG at length 128) run once. Without CUDA the clock is the process's CPU
time (``--clock cpu``), so other jobs on a shared machine do not distort the ratios; with
several torch threads it adds up the threads' time, so compare at equal thread counts.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from interpipe.attribution import AttributeSettings, Batch, ScoredModel, attribute, attribute_positions
from interpipe.attribution.methods import resolve_targets


CLOCK = time.perf_counter  # set in main(): process CPU time on a CPU-only run, wall time on CUDA


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(CLOCK() - start)
    return min(times)


def toy_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models.toy import ToySettings, build_tokenizer

    s = ToySettings()
    tokenizer = build_tokenizer([" ".join(f"w{i}" for i in range(500))])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=s.n_embd, n_layer=s.n_layer,
                        n_head=s.n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tokenizer, "causal_lm"


def minilm():
    from interpipe.models import load_pretrained

    torch.manual_seed(0)
    model, tokenizer, _ = load_pretrained("minilm", "sequence_classifier", num_labels=2)
    return model, tokenizer, "sequence_classifier"


def smollm2(folder: str = "outputs/models/smollm2"):
    """The embedded SmolLM2-135M-Instruct model folder written by the model stage (``dvc repro model``)."""
    from interpipe.models import load_model

    loaded = load_model(folder)
    return loaded.model, loaded.tokenizer, "causal_lm"


def random_batch(tokenizer, kind: str, n: int, length: int) -> Batch:
    gen = torch.Generator().manual_seed(length)
    specials = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(min(len(tokenizer), 3000)) if i not in specials])
    ids = pool[torch.randint(len(pool), (n, length), generator=gen)]
    eligible = torch.ones_like(ids, dtype=torch.bool)
    if kind == "causal_lm":
        ids[:, 0] = tokenizer.bos_token_id
        score_pos, targets = torch.full((n,), length - 1), ids[:, 1].clone()
    else:
        ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        score_pos, targets = torch.zeros(n, dtype=torch.long), torch.full((n,), -1)
    eligible[:, 0] = kind != "causal_lm"
    return Batch(example_ids=[str(i) for i in range(n)], tasks=["bench"] * n, input_ids=ids,
                 attention_mask=torch.ones_like(ids), eligible=eligible, cue_mask=torch.zeros_like(eligible),
                 score_pos=score_pos, target_ids=targets, gold_ids=targets.clamp(min=0),
                 tokens=[[""] * length for _ in range(n)])


def captum_runner(sm: ScoredModel, batch: Batch, method: str, steps: int, internal: int):
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    targets = batch.target_ids

    def forward(embeds):
        idx = torch.arange(embeds.shape[0]) % len(batch)  # Captum expands (steps x examples)
        logits = sm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask[idx]).logits
        return logits[torch.arange(len(idx)), batch.score_pos[idx]] if sm.kind == "causal_lm" else logits

    def run():
        embeds = sm.embed(batch.input_ids).detach()
        if method == "saliency":
            return Saliency(forward).attribute(embeds, target=targets, abs=True).norm(dim=-1)
        if method == "grad_x_input":
            return InputXGradient(forward).attribute(embeds, target=targets).sum(-1)
        return IntegratedGradients(forward).attribute(embeds, baselines=torch.zeros_like(embeds), target=targets,
                                                      n_steps=steps, internal_batch_size=internal).sum(-1)

    return run


def inseq_available() -> bool:
    try:
        import inseq  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def bench_model(name, model, tokenizer, kind, lengths, n, ig_n, n_single, repeats, ig_steps, internal) -> list[dict]:
    sm = ScoredModel(model, kind)
    rows = []
    for length in lengths:
        full = random_batch(tokenizer, kind, n, length)
        full.target_ids = resolve_targets(sm, full)  # the same explicit targets for both libraries
        # IG with Captum's fixed Gauss-Legendre rule at equal steps (the side-by-side comparison); the
        # study's adaptive default would spend a different number of steps per example
        s = AttributeSettings(ig_method="gausslegendre", ig_steps=ig_steps, ig_internal_batch_size=internal,
                              layerwise=False)
        ours: dict[str, float] = {}
        for method in ("normxlogit", "saliency", "grad_x_input", "integrated_gradients"):
            ig = method == "integrated_gradients"
            batch = full.select(list(range(ig_n))) if ig else full
            reps = 1 if ig and length > 64 else repeats
            seconds = best_time(lambda: attribute(sm, batch, method, s, tokenizer), reps)
            ours[method] = len(batch) / seconds
            row = {"model": name, "length": length, "method": method, "n": len(batch), "ours_ex_per_s": ours[method]}
            if method != "normxlogit":
                theirs = len(batch) / best_time(captum_runner(sm, batch, method, ig_steps, internal), reps)
                row.update(captum_ex_per_s=theirs, ratio_vs_captum=ours[method] / theirs)
            rows.append(row)
            print(json.dumps(row), flush=True)
        rows.append({"model": name, "length": length, "method": f"normxlogit_vs_ig{ig_steps}",
                     "ratio": ours["normxlogit"] / ours["integrated_gradients"]})
        print(json.dumps(rows[-1]), flush=True)
        if n_single > n:  # no backward pass: NormXLogit affords far larger batches
            big = random_batch(tokenizer, kind, n_single, length)
            big.target_ids = resolve_targets(sm, big)
            per_s = n_single / best_time(lambda: attribute(sm, big, "normxlogit", s, tokenizer), repeats)
            rows.append({"model": name, "length": length, "method": f"normxlogit@{n_single}_vs_ig{ig_steps}",
                         "ours_ex_per_s": per_s, "ratio": per_s / ours["integrated_gradients"]})
            print(json.dumps(rows[-1]), flush=True)
        if kind == "causal_lm":
            rows.append(bench_positions(sm, tokenizer, batch.input_ids[0], name, length, repeats))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_positions(sm: ScoredModel, tokenizer, ids, name: str, length: int, repeats: int) -> dict:
    """Every next-token target of one sequence: ours (one batched backward) vs Captum's loop.

    Captum's ``LLMGradientAttribution`` scores the prompt for each target of a continuation,
    one forward and backward per target; with a two-token prompt it loops over every later
    position (``length - 2`` targets; ours does all ``length - 1``).
    """
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    n_prompt = 2
    inp = TextTokenInput(tokenizer.decode(ids[1:n_prompt]), tokenizer)  # the tokenizer adds BOS back
    llm = LLMGradientAttribution(LayerGradientXActivation(sm.model, sm.model.get_input_embeddings()), tokenizer)
    theirs = best_time(lambda: llm.attribute(inp, target=ids[n_prompt:]), 1)
    ours = best_time(lambda: attribute_positions(sm, ids, "grad_x_input"), repeats)
    ours_nxl = best_time(lambda: attribute_positions(sm, ids, "normxlogit"), repeats)
    row = {"model": name, "length": length, "method": "every_position_grad_x_input",
           "captum_targets": length - n_prompt, "ours_targets": length - 1, "ours_s": ours, "captum_s": theirs,
           "ratio_vs_captum": theirs / ours, "normxlogit_ratio_vs_captum": theirs / ours_nxl}
    if inseq_available():  # inseq also steps through the continuation, one attribution per generated token
        import inseq

        model = inseq.load_model(sm.model, "input_x_gradient", tokenizer=tokenizer)
        prompt, full = tokenizer.decode(ids[1:n_prompt]), tokenizer.decode(ids[1:])
        row["inseq_s"] = best_time(lambda: model.attribute(input_texts=prompt, generated_texts=full,
                                                           show_progress=False, step_scores=[]), 1)
        row["ratio_vs_inseq"] = row["inseq_s"] / ours
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--n", type=int, default=32, help="examples per batch")
    parser.add_argument("--ig-n", type=int, default=2, help="examples per batch for integrated gradients")
    parser.add_argument("--n-single", type=int, default=128,
                        help="NormXLogit also at this batch (it needs no backward pass, so it affords large ones)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["toy", "minilm"], choices=["toy", "minilm", "smollm2"],
                        help="smollm2 reads outputs/models/smollm2 (dvc repro model)")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="auto: process CPU time without CUDA (robust on a shared machine), else wall time")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    global CLOCK
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and not torch.cuda.is_available())
    CLOCK = time.process_time if cpu_clock else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'CPU' if cpu_clock else 'wall'} clock; inseq: "
          f"{'compared on every-position attribution' if inseq_available() else 'not installed, skipped'}")
    rows = []
    for name in args.models:
        model, tokenizer, kind = {"toy": toy_gpt2, "minilm": minilm, "smollm2": smollm2}[name]()
        rows += bench_model(name, model, tokenizer, kind, args.lengths, args.n, min(args.ig_n, args.n), args.n_single,
                            args.repeats, args.ig_steps, args.internal_batch_size)
    print("\nsummary (ratio > 1: ours faster)")
    for r in rows:
        ratio = r.get("ratio_vs_captum", r.get("ratio"))
        if ratio is None:
            continue
        label = "vs Captum" if "ratio_vs_captum" in r else "NormXLogit / IG throughput"
        print(f"  {r['model']:7s} len={r['length']:<4d} {r['method']:28s} {ratio:10.1f}x  {label}")
        if "ratio_vs_inseq" in r:
            print(f"  {r['model']:7s} len={r['length']:<4d} {r['method']:28s} {r['ratio_vs_inseq']:10.1f}x  vs inseq")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
