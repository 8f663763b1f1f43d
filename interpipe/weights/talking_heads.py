"""Talking Heads on the Laundry List task: inhibition from data and component edits.

Merullo, Eickhoff & Pavlick 2024 (arXiv 2406.09519). Weight-based composition scores come from
:mod:`interpipe.weights.composition`. On data:

- **Receiver.** The "mover" head: at the final position it attends most to the item left in the
  bag (unless ``receiver`` names one).
- **Inhibition score** of a sender OV component ``i`` (writing direction ``v_i``): remove it from
  the sender's output (``head_out -= (head_out . v_i) v_i``) and measure how much the receiver's
  attention from the final position to the *repeated* items (those taken out again) rises. A
  positive score means the component keeps the receiver off the repeated items. It is reported
  next to the weight-based Q-composition score of the same component, with their correlation.
- **Edit.** Scale one sender component by ``alpha`` — as a weight edit
  ``W_O[h] += (alpha - 1) (W_O[h] v) v^T`` (saved as a new model folder) and as an activation edit on
  the per-head ``z`` that the output projection reads (``z_h += (alpha - 1)(z_h . W_O[h] v) c`` with
  ``c W_O[h] = v``; the two agree up to the all-ones direction, which every reader's LayerNorm
  removes). The component and ``alpha`` are chosen on training-split prompts; accuracy against list
  length is reported on held-out prompts before and after.

**Forwards.** Per-head weights are read once through TransformerLens's bridge
(:func:`interpipe.weights.common.folded_head_weights`); every data-based pass runs the plain HF model
with hooks on the modules :func:`interpipe.models.arch.describe_architecture` names: a forward
pre-hook on a block's attention output projection reads or edits the per-head ``z``, a forward hook
on its attention module (eager attention) reads the pattern. Prompts are batched by length, only the
final positions are unembedded, and the inhibition passes stop at the receiver's attention.

The paper's prompt format and edit formula are not published; these are the choices made here.

**Architectures** (asked of :func:`interpipe.models.arch.describe_architecture`; causal LMs only,
others refused before any work). Grouped-query attention: query head ``h`` reads its group's key/value
head ``kv_head_of(h)``, so scores, inhibition and edits are per *query* head (``n_heads`` per layer)
and an edit of ``W_O[h]`` touches that head alone. RMSNorm: its gain is folded like LayerNorm's, but
nothing is centred (see :mod:`interpipe.weights.common`). Rotary positions (GPT-NeoX, Llama, Qwen2):
the real QK circuit between query position ``i`` and key position ``j`` is ``W_Q R_(j-i) W_K^T``
(``R`` the rotation by the relative offset). The weight-based QK matrices here ignore the rotation,
i.e. Q/K-composition scores describe the circuit at relative offset 0 (position-free); OV (V-)
composition is unaffected because values are not rotated. The data-based inhibition scores and the
edits are measured on real forwards, rotation included, so they need no such caveat.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
from interpipe.weights.common import (StopForward, StudyResult, attention_implementation, attention_module,
                                      final_position_logits, hooked, model_device, out_projection, z_hook)

def _item_words() -> set[str]:
    from interpipe.data import vocab

    return set(vocab.OBJECTS)


def laundry_positions(tokenizer, prompt: str, answer: str) -> tuple[int, list[int]]:
    """Token positions of the kept item and of the repeated (taken-out) items in the list part.

    Positions count the tokens of the prompt prefix before each word (so BPE and word-level
    tokenizers both work; BOS included when the tokenizer adds it).
    """
    list_part = prompt.split(" . ", 1)[0]
    rest = prompt[len(list_part):]
    items = _item_words()
    answer_pos, repeated, offset = None, [], 0
    for word in list_part.split(" "):
        if word in items:
            pos = len(tokenizer(prompt[:offset].rstrip())["input_ids"]) if offset else 0
            if word == answer:
                answer_pos = pos
            elif f" {word} " in f"{rest} ":
                repeated.append(pos)
        offset += len(word) + 1
    if answer_pos is None or not repeated:
        raise ValueError(f"not a Laundry List prompt (answer {answer!r} or repeated items not found): {prompt[:100]!r}")
    return answer_pos, repeated


class LaundryBatch:
    """Encoded Laundry List prompts with answer ids and the item positions."""

    def __init__(self, tokenizer, model, rows: list[dict]):
        self.rows = rows
        self.ids, _, self.last = encode_prompts(tokenizer, [r["prompt"] for r in rows], context_length(model))
        self.answers = torch.tensor([answer_token_id(tokenizer, r["answer"]) for r in rows])
        self.lengths = torch.tensor([int(r["n_items"]) for r in rows])
        pos = [laundry_positions(tokenizer, r["prompt"], r["answer"]) for r in rows]
        self.answer_pos = torch.tensor([p[0] for p in pos])
        self.repeated = torch.zeros_like(self.ids, dtype=torch.bool)  # (batch, pos)
        for i, (_, rep) in enumerate(pos):
            self.repeated[i, rep] = True


def scale_component_hook(alpha: float, head: int, read: torch.Tensor, write: torch.Tensor):
    """An edit of the per-head ``z`` (batch, pos, head, d_head) scaling one OV component of ``head`` by
    ``alpha`` (0 removes it); :func:`laundry_forward` applies it at the output projection's input."""
    def hook(z):  # z: (batch, pos, head, d_head)
        r, w = read.to(z.device, z.dtype), write.to(z.device, z.dtype)
        zh = z[:, :, head]  # (batch, pos, d_head)
        z = z.clone()
        z[:, :, head] = zh + (alpha - 1.0) * (zh @ r)[..., None] * w  # (batch, pos, d_head)
        return z
    return hook


def edit_vectors(weights, components, layer: int, head: int, comp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``read = W_O[h] v`` and ``write = c`` with ``c W_O[h] = v`` (centred ``W_O``), both (d_head,)."""
    v = components.ov_out[layer, head, comp]  # (d_model,)
    w_o = weights.W_O[layer, head]  # (d_head, d_model)
    write = torch.linalg.lstsq(w_o.T, v[:, None]).solution[:, 0]  # (d_head,)
    return w_o @ v, write


@torch.no_grad()
def apply_weight_edit(model, spec, components, layer: int, head: int, comp: int, alpha: float) -> None:
    """Scale OV component ``comp`` of query head ``layer.head`` by ``alpha`` in ``model``'s weights (in
    place): ``W_O[h] += (alpha - 1) (W_O[h] v) v^T`` on the rows of ``spec.blocks[layer].attn_out`` that
    belong to head ``h`` (per query head also under GQA). ``spec`` is the model's :class:`ArchSpec`."""
    weight, conv1d = out_projection(model, spec, layer)
    v = components.ov_out[layer, head, comp].to(weight.device)  # (d_model,)
    rows = slice(head * spec.d_head, (head + 1) * spec.d_head)
    w_o = weight[rows] if conv1d else weight[:, rows].T  # (d_head, d_model)
    delta = (alpha - 1.0) * torch.outer(w_o.float() @ v, v)  # (d_head, d_model)
    if conv1d:
        weight[rows] += delta.to(weight.dtype)
    else:
        weight[:, rows] += delta.T.to(weight.dtype)


def _chunks(batch: LaundryBatch, batch_size: int) -> list[torch.Tensor]:
    """Row indices in chunks of ``batch_size`` prompts of similar length (less padding per forward)."""
    order = torch.argsort(batch.last, stable=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pattern_hook(store: dict, layer: int, read, stop: bool):
    """A forward hook on an attention module storing ``read(pattern)``; ``stop`` ends the forward there."""
    def hook(module, args, output):
        pattern = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if pattern is None or pattern.dim() != 4:
            raise RuntimeError(f"{type(module).__name__} returned no attention weights; it needs eager attention")
        store[layer] = read(pattern.float().cpu())  # pattern: (batch, head, q_pos, k_pos)
        if stop:
            raise StopForward
    return hook


@torch.inference_mode()
def laundry_forward(model, spec, batch: LaundryBatch, batch_size: int, edits=(), readers=None, logits: bool = True):
    """One pass of the HF ``model`` over ``batch`` in length-sorted chunks.

    Args:
        edits: ``(layer, edit)`` pairs, ``edit(z) -> z`` on the per-head ``z`` (batch, pos, head, d_head)
            that ``layer``'s output projection reads.
        readers: ``{layer: read(pattern, rows)}`` reading ``layer``'s attention pattern (eager attention)
            for the batch rows ``rows`` of the chunk.
        logits: ``False`` stops every forward after the last read layer's attention.

    Returns (final-position logits (batch, d_vocab) or None, ``{layer: reads (batch, ...)}``), in row order.
    """
    readers, chunks = readers or {}, _chunks(batch, batch_size)
    stop = None if logits or not readers else max(readers)
    pre = {spec.blocks[layer].attn_out: z_hook(spec, edit) for layer, edit in edits}
    out, reads = [], {layer: [] for layer in readers}
    with attention_implementation(model, "eager" if readers else model.config._attn_implementation):
        for rows in chunks:
            store = {}
            post = {attention_module(spec, layer): _pattern_hook(store, layer, lambda p, fn=fn, rows=rows: fn(p, rows), layer == stop)
                    for layer, fn in readers.items()}
            with hooked(model, pre=pre, post=post):
                out.append(_chunk_logits(model, spec, batch.ids[rows], batch.last[rows], logits))
            for layer in readers:
                reads[layer].append(store[layer])
    inverse = torch.argsort(torch.cat(chunks))
    return (torch.cat(out)[inverse] if logits else None), {layer: torch.cat(r)[inverse] for layer, r in reads.items()}


def _chunk_logits(model, spec, ids: torch.Tensor, last: torch.Tensor, logits: bool) -> torch.Tensor | None:
    if logits:
        return final_position_logits(model, spec, ids, last).float().cpu()  # (b, V)
    try:
        model(input_ids=ids[:, :int(last.max()) + 1].to(model_device(model)))
    except StopForward:
        pass
    return None


def run_laundry(model, spec, batch: LaundryBatch, batch_size: int, edits=(), receiver: tuple[int, int] | None = None,
                logits: bool = True):
    """Final-position logits (batch, d_vocab) (None with ``logits=False``: each forward stops at the
    receiver's attention) and, with ``receiver``, its attention from the final position (batch, k_pos)."""
    if receiver is None:
        return laundry_forward(model, spec, batch, batch_size, edits)[0], None
    layer, head = receiver
    width = batch.ids.shape[1]

    def read(p, rows):  # p: (b, head, q_pos, k_pos) of the chunk, k_pos cut to the chunk's longest prompt
        attn = p[torch.arange(len(rows)), head, batch.last[rows]]  # (b, k_pos)
        return torch.nn.functional.pad(attn, (0, width - attn.shape[1]))

    out, reads = laundry_forward(model, spec, batch, batch_size, edits, {layer: read}, logits)
    return out, reads[layer]


def hf_final_logits(model, batch: LaundryBatch, batch_size: int) -> torch.Tensor:
    """Final-position logits (batch, d_vocab) of a plain HF model, without edits."""
    from interpipe.models.arch import describe_architecture

    return run_laundry(model, describe_architecture(model), batch, batch_size)[0]


def accuracy_by_length(logits: torch.Tensor, batch: LaundryBatch) -> dict[int, float]:
    correct = (logits.argmax(-1) == batch.answers).float()
    return {int(n): float(correct[batch.lengths == n].mean()) for n in batch.lengths.unique()}


def generated_rows(lengths: list[int], n_per_length: int, seed: int, max_len: int | None, tokenizer) -> list[dict]:
    """Laundry List prompts of lengths never trained on, from the prepare stage's generator."""
    from interpipe.data import tasks

    rng, rows = random.Random(f"{seed}-talking-heads-lengths"), []
    for n in lengths:
        for _ in range(n_per_length):
            row = tasks.laundry_list(rng, n_items=n)
            if max_len is not None and len(tokenizer(row["prompt"])["input_ids"]) > max_len:
                break  # too long for this model's context: drop the length
            rows.append(row)
    return rows


class TalkingHeadsResult(StudyResult):
    """Composition scores, inhibition scores and Laundry List accuracy before/after the edit."""

    study = "talking_heads"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_talking_heads

        return plot_talking_heads(self)


def sender_jobs(weights, components, receiver: tuple[int, int], n_comp: int, max_senders: int = 0) -> list[tuple]:
    """Sender components (layer, head, comp) scored on data: every head before the receiver, its top
    ``n_comp`` components; with ``max_senders`` only those with the largest weight-based Q-composition."""
    from interpipe.weights.composition import receiver_composition

    q = receiver_composition(weights, components, "Q", receiver)  # (layer, head, comp)
    jobs = [(l, h, c) for l in range(receiver[0]) for h in range(weights.n_heads) for c in range(n_comp)]
    if max_senders and len(jobs) > max_senders:
        jobs = sorted(jobs, key=lambda j: -float(q[j]))[:max_senders]
    return jobs


def inhibition_scores(model, spec, weights, components, batch: LaundryBatch, receiver: tuple[int, int],
                      n_comp: int, batch_size: int, max_senders: int = 0):
    """Data-based inhibition of sender components (layers before the receiver) on the receiver
    (every forward stops at the receiver's attention)."""
    import pandas as pd

    from interpipe.weights.composition import receiver_composition

    _, clean = run_laundry(model, spec, batch, batch_size, receiver=receiver, logits=False)
    base_rep = (clean * batch.repeated[:, :clean.shape[1]]).sum(-1)  # (batch,)
    wq = {m: receiver_composition(weights, components, m, receiver) for m in "QKV"}  # (layer, head, comp)
    rows = []
    for layer, head, comp in tqdm(sender_jobs(weights, components, receiver, n_comp, max_senders), desc="inhibition scores"):
        read, write = edit_vectors(weights, components, layer, head, comp)
        edit = (layer, scale_component_hook(0.0, head, read, write))
        _, attn = run_laundry(model, spec, batch, batch_size, edits=[edit], receiver=receiver, logits=False)
        rep = (attn * batch.repeated[:, :attn.shape[1]]).sum(-1)
        ans = attn[torch.arange(len(attn)), batch.answer_pos] - clean[torch.arange(len(clean)), batch.answer_pos]
        rows.append({"sender": f"{layer}.{head}", "comp": comp, "singular_value": float(components.ov_s[layer, head, comp]),
                     "inhibition": float((rep - base_rep).mean()), "delta_attn_answer": float(ans.mean()),
                     **{f"{m}_composition": float(wq[m][layer, head, comp]) for m in "QKV"}})
    return pd.DataFrame(rows).sort_values("inhibition", ascending=False).reset_index(drop=True), clean


def pick_receiver(model, spec, batch: LaundryBatch, batch_size: int) -> tuple[tuple[int, int], torch.Tensor]:
    """The head (layer >= 1) whose final-position attention to the kept item is largest on average,
    and the final-position logits (batch, d_vocab), from one pass reading every layer's pattern."""
    def read(p, rows):  # p: (b, head, q_pos, k_pos) -> (b, head)
        return p[torch.arange(len(rows)), :, batch.last[rows], batch.answer_pos[rows]]

    layers = range(1, spec.n_layers)
    logits, reads = laundry_forward(model, spec, batch, batch_size, readers={layer: read for layer in layers})
    scores = torch.stack([reads[layer].mean(0) for layer in layers])  # (layer - 1, head)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return (layer + 1, head), logits


def choose_edit(model, spec, weights, comps, inhibition, select: LaundryBatch, base_logits: torch.Tensor, scales,
                n_candidates: int, batch_size: int):
    """Try each scale on the ``n_candidates`` most inhibiting components (training-split prompts,
    ``base_logits`` their logits without an edit); returns the trials (DataFrame, best first) and the
    selection accuracy without an edit."""
    import pandas as pd

    base_acc = float((base_logits.argmax(-1) == select.answers).float().mean())
    trials = []
    for _, row in inhibition.head(n_candidates).iterrows():
        layer, head = (int(x) for x in row["sender"].split("."))
        read, write = edit_vectors(weights, comps, layer, head, int(row["comp"]))
        for alpha in scales:
            logits, _ = run_laundry(model, spec, select, batch_size, edits=[(layer, scale_component_hook(alpha, head, read, write))])
            trials.append({"sender": row["sender"], "comp": int(row["comp"]), "alpha": float(alpha),
                           "select_accuracy": float((logits.argmax(-1) == select.answers).float().mean())})
    trials = pd.DataFrame(trials).sort_values("select_accuracy", ascending=False, kind="stable").reset_index(drop=True)
    return trials, base_acc


def run_talking_heads(loaded, model_folder: str | Path, data_root: str | Path, settings, seed: int = 0,
                      batch_size: int = 64, out_dir: str | Path | None = None) -> TalkingHeadsResult:
    """The whole Talking Heads study on one model; with ``out_dir``, also saves the edited model.

    Refuses non-causal and undescribed families (naming the ``model_type``) before any work.
    """
    import copy

    import pandas as pd

    from interpipe.data import load_task
    from interpipe.models import describe, save_model_folder
    from interpipe.weights.common import architecture, boot_bridge, folded_head_weights
    from interpipe.weights.composition import head_components, head_pair_frame, top_channels

    s, tok, model = settings, loaded.tokenizer, loaded.model
    spec = architecture(model, "talking_heads")
    if spec.n_layers < 2:
        raise ValueError(f"the talking_heads study needs at least 2 layers (a sender before the receiver); "
                         f"model_type={spec.model_type!r} has {spec.n_layers}")
    if s.receiver:
        receiver = tuple(int(x) for x in s.receiver.split("."))
        if not 1 <= receiver[0] < spec.n_layers or not 0 <= receiver[1] < spec.n_heads:
            raise ValueError(f"weights.talking_heads.receiver={s.receiver!r} is not a head of layers 1..{spec.n_layers - 1}")
    weights = folded_head_weights(boot_bridge(model, tok, model_folder), model, spec)  # the bridge is freed here
    comps = head_components(weights, s.n_components)
    channels, pairs = top_channels(comps, s.top_channels), head_pair_frame(comps)

    test_rows = list(load_task(data_root, "laundry_list", "test"))
    test_rows += generated_rows(s.extra_lengths, s.n_per_extra_length, seed, context_length(model), tok)
    test = LaundryBatch(tok, model, test_rows)
    select = LaundryBatch(tok, model, list(load_task(data_root, "laundry_list", "train"))[: s.n_select])
    if s.receiver:
        select_logits = run_laundry(model, spec, select, batch_size)[0]
    else:
        receiver, select_logits = pick_receiver(model, spec, select, batch_size)
    probe = LaundryBatch(tok, model, test_rows[: s.n_inhibition_prompts])
    inhibition, _ = inhibition_scores(model, spec, weights, comps, probe, receiver,
                                      min(s.inhibition_components, s.n_components), batch_size, s.max_senders)
    trials, base_acc = choose_edit(model, spec, weights, comps, inhibition, select, select_logits, s.edit_scales,
                                   s.edit_candidates, batch_size)
    chosen = trials.iloc[0]
    layer, head = (int(x) for x in chosen["sender"].split("."))
    comp, alpha = int(chosen["comp"]), float(chosen["alpha"])

    # held-out accuracy: before, activation edit, weight edit (a copy saved as a model folder)
    before = run_laundry(model, spec, test, batch_size)[0]
    read, write = edit_vectors(weights, comps, layer, head, comp)
    act, _ = run_laundry(model, spec, test, batch_size, edits=[(layer, scale_component_hook(alpha, head, read, write))])
    edited = copy.deepcopy(model)
    apply_weight_edit(edited, spec, comps, layer, head, comp, alpha)
    wed = run_laundry(edited, spec, test, batch_size)[0]
    acc = {name: accuracy_by_length(lg, test) for name, lg in (("before", before), ("activation_edit", act), ("weight_edit", wed))}
    table = pd.DataFrame([{"n_items": n, "n": int((test.lengths == n).sum()), **{k: acc[k][n] for k in acc}}
                          for n in sorted(acc["before"])])
    edit = {"sender": f"{layer}.{head}", "comp": comp, "alpha": alpha, "receiver": f"{receiver[0]}.{receiver[1]}"}
    if out_dir is not None:
        card = describe(edited, f"{loaded.card.name}-talking-heads-edit", str(model_folder), loaded.card.kind,
                        extra={"edit": edit, "base_model": loaded.card.name})
        save_model_folder(Path(out_dir) / "model_edited", edited, tok, card)

    metrics = {
        "receiver_layer": receiver[0], "receiver_head": receiver[1], "edit_sender_layer": layer,
        "edit_sender_head": head, "edit_comp": comp, "edit_alpha": alpha,
        "select_accuracy_before": base_acc, "select_accuracy_after": float(chosen["select_accuracy"]),
        "edit_improves_selection": int(float(chosen["select_accuracy"]) > base_acc),  # 0: no tried edit helps
        **summary_metrics(channels, inhibition, weights, test, before, act, wed, acc),
    }
    tensors = {"ov_out": comps.ov_out, "ov_s": comps.ov_s, "qk_s": comps.qk_s, "ov_in": comps.ov_in,
               "qk_q": comps.qk_q, "qk_k": comps.qk_k}
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "edit": edit, "architecture": spec.to_dict(),
            "top_channel": " ".join(str(channels[c].iloc[0]) for c in ("mode", "sender", "sender_comp", "receiver", "receiver_comp"))}
    return TalkingHeadsResult(metrics, {"top_channels": channels, "head_composition": pairs, "inhibition": inhibition,
                                        "edit_trials": trials, "laundry_accuracy": table}, tensors, info)


def summary_metrics(channels, inhibition, weights, test: LaundryBatch, before, act, wed, acc) -> dict:
    """Headline numbers: top channel, inhibition, held-out accuracy (all and by length), edit agreement."""
    from scipy import stats

    from interpipe.weights.composition import random_baseline

    all_correct = lambda lg: float((lg.argmax(-1) == test.answers).float().mean())  # noqa: E731
    metrics = {
        "top_channel_score": float(channels["score"].iloc[0]),
        "random_pair_baseline": random_baseline(weights.W_O.shape[-1]),
        "inhibition_top": float(inhibition["inhibition"].iloc[0]),
        "accuracy_before": all_correct(before), "accuracy_weight_edit": all_correct(wed),
        "accuracy_activation_edit": all_correct(act),
        "edit_max_logit_gap": float((wed - act).abs().max()),  # weight vs activation edit (should be ~0)
        **{f"accuracy_len{n}_{k}": acc[k][n] for k in acc for n in acc[k]},
    }
    if len(inhibition) >= 2:
        r_q = stats.pearsonr(inhibition["Q_composition"], inhibition["inhibition"])
        rho_q = stats.spearmanr(inhibition["Q_composition"], inhibition["inhibition"])
        for name, value in (("pearson", r_q.statistic), ("spearman", rho_q.statistic)):
            if math.isfinite(float(value)):  # undefined for constant scores
                metrics[f"inhibition_vs_q_composition_{name}"] = float(value)
    return metrics
