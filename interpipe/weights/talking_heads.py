"""Talking Heads on the Laundry List task: inhibition from data and component edits.

Merullo, Eickhoff & Pavlick 2024 (arXiv 2406.09519). Weight-based composition scores come from
:mod:`interpipe.weights.composition`; prompts, batches and hooked forwards from
:mod:`interpipe.weights.laundry`. On data:

- **Where the model fails.** The receiver, the sender components and ``alpha`` are chosen on
  *selection* prompts at the list lengths the model fails (``select_lengths``, generated with their
  own seed); accuracy by length is reported on *held-out* prompts (another seed, no key shared with
  the selection prompts or the training split), so a gain is not chosen and measured on the same
  prompts. ``alpha = 1`` (no edit) is always a trial and wins ties: an edit is applied only when it
  raises selection accuracy.
- **Receiver.** The "mover" head: at the final position it attends most to the item left in the
  bag (unless ``receiver`` names one).
- **Inhibition score** of a sender OV component ``i`` (writing direction ``v_i``): remove it from
  the sender's output (``head_out -= (head_out . v_i) v_i``) and measure how much the receiver's
  attention from the final position to *every mention* of the repeated items (in the list and where
  they are taken out) rises. Positive: the component keeps the receiver off the repeated items. The
  first-mention-only score is listed beside it, and both next to the weight-based Q-composition.
- **Edit.** Scale one sender component by ``alpha`` — as a weight edit
  ``W_O[h] += (alpha - 1) (W_O[h] v) v^T`` (saved as a new model folder; its held-out accuracy is
  measured on that folder reloaded with stock ``transformers``) and as an activation edit on the
  per-head ``z`` that the output projection reads (``z_h += (alpha - 1)(z_h . W_O[h] v) c`` with
  ``c W_O[h] = v``; the two agree up to the all-ones direction, which every reader's LayerNorm
  removes).
- **Intervals.** Accuracy at each length gets a bootstrap 95 % interval over prompts
  (:func:`interpipe.stats.bootstrap`); the gain at the failing lengths is a paired interval (the same
  prompts before and after), ``gain_failing_real`` = 1 when it excludes 0 and is positive.

The paper's prompt format and edit formula are not published; these are the choices made here.

Heads (receiver, senders) are :class:`~interpipe.components.Component` values. The tables
(``inhibition``, ``edit_trials``, ...), ``info.json``'s ``edit`` and the edited model's card write them
in their one textual form (``L3H1``); a head taken from such a table is read back with
:meth:`~interpipe.components.Component.parse`.

**Architectures** (asked of :func:`interpipe.models.arch.describe_architecture`; causal LMs only,
others refused before any work). Grouped-query attention: query head ``h`` reads its group's key/value
head ``kv_head_of(h)``, so scores, inhibition and edits are per *query* head (``n_heads`` per layer)
and an edit of ``W_O[h]`` touches that head alone (its KV head, shared with the group, is untouched).
RMSNorm: its gain is folded like LayerNorm's, but nothing is centred (see
:mod:`interpipe.weights.common`). Rotary positions (GPT-NeoX, Llama, Qwen2): the real QK circuit between
query position ``i`` and key position ``j`` is ``W_Q R_(j-i) W_K^T`` (``R`` the rotation by the relative
offset). The weight-based QK matrices here ignore the rotation, i.e. Q/K-composition scores describe
the circuit at relative offset 0 (position-free); OV (V-) composition is unaffected because values are
not rotated. The data-based inhibition scores and the edits are measured on real forwards, rotation
included, so they need no such caveat.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interpipe.components import Component
from interpipe.weights.common import out_projection
from interpipe.weights.result import StudyResult
from interpipe.weights.laundry import LaundryBatch, correct, item_margin, laundry_forward, laundry_rows, run_laundry
from interpipe.weights.talking_heads_tables import accuracy_table, headline_frame, summary_metrics


def scale_component_hook(alpha: float, head: int, read: torch.Tensor, write: torch.Tensor):
    """An edit of the per-head ``z`` (batch, pos, head, d_head) scaling one OV component of ``head`` by
    ``alpha`` (0 removes it); :func:`~interpipe.weights.laundry.laundry_forward` applies it at the
    output projection's input."""
    def hook(z):  # z: (batch, pos, head, d_head)
        r, w = read.to(z.device, z.dtype), write.to(z.device, z.dtype)
        zh = z[:, :, head]  # (batch, pos, d_head)
        z = z.clone()
        z[:, :, head] = zh + (alpha - 1.0) * (zh @ r)[..., None] * w  # (batch, pos, d_head)
        return z
    return hook


def edit_vectors(weights, components, head: Component, comp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``read = W_O[h] v`` and ``write = c`` with ``c W_O[h] = v`` (centred ``W_O``) of OV component
    ``comp`` of ``head``, both (d_head,)."""
    v = components.ov_out[head.layer, head.index, comp]  # (d_model,)
    w_o = weights.W_O[head.layer, head.index]  # (d_head, d_model)
    write = v @ torch.linalg.pinv(w_o)  # (d_head,): minimum-norm c with c W_O = v (also for rank-deficient W_O)
    return w_o @ v, write


@torch.no_grad()
def apply_weight_edit(model, spec, components, head: Component, comp: int, alpha: float) -> None:
    """Scale OV component ``comp`` of query head ``head`` by ``alpha`` in ``model``'s weights (in
    place): ``W_O[h] += (alpha - 1) (W_O[h] v) v^T`` on the rows of its layer's ``attn_out`` that
    belong to head ``h`` (per query head also under GQA). ``spec`` is the model's :class:`ArchSpec`."""
    weight, conv1d = out_projection(model, spec, head.layer)
    v = components.ov_out[head.layer, head.index, comp].to(weight.device)  # (d_model,)
    rows = slice(head.index * spec.d_head, (head.index + 1) * spec.d_head)
    w_o = weight[rows] if conv1d else weight[:, rows].T  # (d_head, d_model)
    delta = (alpha - 1.0) * torch.outer(w_o.float() @ v, v)  # (d_head, d_model)
    if conv1d:
        weight[rows] += delta.to(weight.dtype)
    else:
        weight[:, rows] += delta.T.to(weight.dtype)


class TalkingHeadsResult(StudyResult):
    """Composition scores, inhibition scores and Laundry List accuracy before/after the edit."""

    study = "talking_heads"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_talking_heads

        return plot_talking_heads(self)


def sender_jobs(weights, components, receiver: Component, n_comp: int, max_senders: int = 0
                ) -> list[tuple[Component, int]]:
    """Sender components (head, comp) scored on data: every head before the receiver, its top
    ``n_comp`` components; with ``max_senders`` only those with the largest weight-based Q-composition."""
    from interpipe.weights.composition import receiver_composition

    q = receiver_composition(weights, components, "Q", receiver)  # (layer, head, comp)
    heads = [Component.head(l, h) for l in range(receiver.layer) for h in range(weights.n_heads)]
    jobs = [(head, c) for head in heads for c in range(n_comp)]
    if max_senders and len(jobs) > max_senders:
        jobs = sorted(jobs, key=lambda j: -float(q[j[0].layer, j[0].index, j[1]]))[:max_senders]
    return jobs


def attention_to(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The receiver's final-position attention (batch, k_pos) summed over the positions in ``mask``
    (batch, pos): (batch,)."""
    return (attn * mask[:, :attn.shape[1]]).sum(-1)


def inhibition_scores(model, spec, weights, components, batch: LaundryBatch, receiver: Component,
                      n_comp: int, batch_size: int, max_senders: int = 0):
    """Data-based inhibition of sender components (layers before the receiver) on the receiver:
    the rise of its attention to every mention of the repeated items when the component is removed
    (every forward stops at the receiver's attention). Returns (DataFrame, most inhibiting first, the
    sender written ``L3H1``; clean attention (batch, k_pos))."""
    import pandas as pd

    from interpipe.weights.composition import receiver_composition

    at = (receiver.layer, receiver.index)  # the receiver as run_laundry takes it
    _, clean = run_laundry(model, spec, batch, batch_size, receiver=at, logits=False)
    base_all, base_first = attention_to(clean, batch.repeated), attention_to(clean, batch.repeated_first)
    wq = {m: receiver_composition(weights, components, m, receiver) for m in "QKV"}  # (layer, head, comp)
    rows, arange = [], torch.arange(len(clean))
    for sender, comp in tqdm(sender_jobs(weights, components, receiver, n_comp, max_senders), desc="inhibition scores"):
        read, write = edit_vectors(weights, components, sender, comp)
        edit = (sender.layer, scale_component_hook(0.0, sender.index, read, write))
        _, attn = run_laundry(model, spec, batch, batch_size, edits=[edit], receiver=at, logits=False)
        ans = attn[arange, batch.answer_pos] - clean[arange, batch.answer_pos]
        layer, head = sender.layer, sender.index
        rows.append({"sender": sender.name, "comp": comp,
                     "singular_value": float(components.ov_s[layer, head, comp]),
                     "inhibition": float((attention_to(attn, batch.repeated) - base_all).mean()),
                     "inhibition_first_mention": float((attention_to(attn, batch.repeated_first) - base_first).mean()),
                     "delta_attn_answer": float(ans.mean()),
                     **{f"{m}_composition": float(wq[m][layer, head, comp]) for m in "QKV"}})
    return pd.DataFrame(rows).sort_values("inhibition", ascending=False).reset_index(drop=True), clean


def pick_receiver(model, spec, batch: LaundryBatch, batch_size: int) -> tuple[Component, torch.Tensor]:
    """The head (layer >= 1) whose final-position attention to the kept item is largest on average,
    and the final-position logits (batch, d_vocab), from one pass reading every layer's pattern."""
    def read(p, rows):  # p: (b, head, q_pos, k_pos) -> (b, head)
        return p[torch.arange(len(rows)), :, batch.last[rows], batch.answer_pos[rows]]

    layers = range(1, spec.n_layers)
    logits, reads = laundry_forward(model, spec, batch, batch_size, readers={layer: read for layer in layers})
    scores = torch.stack([reads[layer].mean(0) for layer in layers])  # (layer - 1, head)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return Component.head(layer + 1, head), logits


def choose_edit(model, spec, weights, comps, inhibition, select: LaundryBatch, base_logits: torch.Tensor, scales,
                n_candidates: int, batch_size: int):
    """Try each scale on the ``n_candidates`` most inhibiting components, scored on the selection
    prompts ``select`` (``base_logits`` their logits without an edit) by the mean item margin — the kept
    item's logit minus the largest taken-out item's (:func:`~interpipe.weights.laundry.item_margin`):
    continuous, so trials differ where top-1 accuracy moves in steps of one prompt. ``alpha = 1`` needs no
    forward (the unedited model). Returns the trials (DataFrame, best first: highest margin, then
    ``alpha = 1``, then the smallest change ``|log alpha|``; accuracy listed beside) and the unedited
    model's selection scores ``{"accuracy", "margin"}``."""
    import pandas as pd

    base = {"accuracy": float(correct(base_logits, select).mean()), "margin": float(item_margin(base_logits, select).mean())}
    trials = []
    top = inhibition.head(n_candidates)
    candidates = [(Component.parse(sender), int(comp)) for sender, comp in zip(top["sender"], top["comp"])]
    for (sender, comp), alpha in tqdm([(c, alpha) for c in candidates for alpha in scales], desc="edit trials"):
        read, write = edit_vectors(weights, comps, sender, comp)
        if alpha == 1.0:
            scores = base
        else:
            hook = scale_component_hook(alpha, sender.index, read, write)
            logits, _ = run_laundry(model, spec, select, batch_size, edits=[(sender.layer, hook)])
            scores = {"accuracy": float(correct(logits, select).mean()), "margin": float(item_margin(logits, select).mean())}
        trials.append({"sender": sender.name, "comp": comp, "alpha": float(alpha), "select_margin": scores["margin"],
                       "select_accuracy": scores["accuracy"]})
    trials = pd.DataFrame(trials)
    change = np.abs(np.log(np.maximum(trials["alpha"].to_numpy(), 1e-3)))  # alpha = 0 ranks as the largest change
    trials = trials.assign(_no_edit=(trials["alpha"] != 1.0).astype(int), _change=change)
    trials = trials.sort_values(["select_margin", "_no_edit", "_change"], ascending=[False, True, True], kind="stable")
    return trials.drop(columns=["_no_edit", "_change"]).reset_index(drop=True), base


def failing_lengths(select: LaundryBatch, logits: torch.Tensor, below: float) -> list[int]:
    """The list lengths the unedited model fails, read off the selection prompts: those whose accuracy
    is below ``below``; if none is, the one with the lowest accuracy (then the lowest item margin)."""
    ok, margin, lengths = correct(logits, select), item_margin(logits, select), select.lengths
    stats = {int(n): (float(ok[lengths == n].mean()), float(margin[lengths == n].mean())) for n in lengths.unique()}
    failing = sorted(n for n, (acc, _) in stats.items() if acc < below)
    return failing or [min(stats, key=lambda n: stats[n])]


def random_component(edit: dict, n_heads: int, seed: int) -> dict | None:
    """The floor of an edit: the same ``alpha`` on the same-rank component of a head drawn at random
    (seeded) among the heads before the receiver, other than the edited one; None if there is none."""
    sender, receiver = edit["sender"], edit["receiver"]
    heads = [Component.head(layer, h) for layer in range(receiver.layer) for h in range(n_heads)
             if (layer, h) != (sender.layer, sender.index)]
    if not heads:
        return None
    return {**edit, "sender": heads[int(np.random.default_rng(seed).integers(len(heads)))]}


def evaluation_prompts(data_root, s, seed: int, max_len: int, tokenizer) -> tuple[list[dict], list[dict]]:
    """(selection rows at ``s.select_lengths``, held-out rows at ``s.test_lengths``): two generation
    seeds; held-out keys are disjoint from the selection prompts and from the prepared training split."""
    from interpipe.data import load_task

    trained = set(load_task(data_root, "laundry_list", "train")["key"])
    per = -(-s.n_select // len(s.select_lengths))  # ceil: the selection prompts spread over the lengths
    select = laundry_rows(s.select_lengths, per, f"{seed}-talking-heads-select", set(), max_len, tokenizer)
    select = sorted(select, key=lambda r: [x["key"] for x in select if x["n_items"] == r["n_items"]].index(r["key"]))
    select = select[: s.n_select]  # interleaved by length, so the first prompts (the inhibition probe) mix lengths
    test = laundry_rows(s.test_lengths, s.n_test_per_length, f"{seed}-talking-heads-test",
                        trained | {r["key"] for r in select}, max_len, tokenizer)
    if not select or not test:
        raise ValueError(f"weights.talking_heads: no Laundry List prompt of lengths {s.select_lengths} / {s.test_lengths} "
                         f"fits the model's context of {max_len} tokens; choose shorter lengths")
    return select, test


def run_talking_heads(loaded, model_folder: str | Path, data_root: str | Path, settings, seed: int = 0,
                      batch_size: int = 64, out_dir: str | Path | None = None) -> TalkingHeadsResult:
    """The whole Talking Heads study on one model; with ``out_dir``, also saves the edited model and
    measures its held-out accuracy on that folder reloaded with stock ``transformers``.

    Refuses non-causal and undescribed families (naming the ``model_type``) before any work.
    """
    from interpipe.models.tokens import context_length
    from interpipe.weights.common import architecture, boot_bridge, folded_head_weights
    from interpipe.weights.composition import head_components, head_pair_frame, top_channels

    s, tok, model = settings, loaded.tokenizer, loaded.model
    spec = architecture(model, "talking_heads")
    receiver = _configured_receiver(spec, s)
    select_rows, test_rows = evaluation_prompts(data_root, s, seed, context_length(model), tok)
    weights = folded_head_weights(boot_bridge(model, tok, model_folder), model, spec)  # the bridge is freed here
    comps = head_components(weights, s.n_components)
    channels, pairs = top_channels(comps, s.top_channels), head_pair_frame(comps)

    select, test = LaundryBatch(tok, model, select_rows), LaundryBatch(tok, model, test_rows)
    if receiver is not None:
        select_logits = run_laundry(model, spec, select, batch_size)[0]
    else:
        receiver, select_logits = pick_receiver(model, spec, select, batch_size)
    failing = failing_lengths(select, select_logits, s.failing_accuracy)
    at_failing = torch.isin(select.lengths, torch.tensor(failing))  # (n_select,)
    probe = LaundryBatch(tok, model, select_rows[: s.n_inhibition_prompts])
    inhibition, _ = inhibition_scores(model, spec, weights, comps, probe, receiver,
                                      min(s.inhibition_components, s.n_components), batch_size, s.max_senders)
    trials, base = choose_edit(model, spec, weights, comps, inhibition, select.subset(at_failing),
                               select_logits[at_failing], s.edit_scales, s.edit_candidates, batch_size)
    chosen = trials.iloc[0]
    sender, comp, alpha = Component.parse(chosen["sender"]), int(chosen["comp"]), float(chosen["alpha"])
    edit = {"sender": sender, "comp": comp, "alpha": alpha, "receiver": receiver}
    floor = random_component(edit, spec.n_heads, seed)

    logits = held_out_logits(loaded, model_folder, spec, weights, comps, test, edit, batch_size, out_dir, floor)
    table, acc_metrics = accuracy_table(test, logits, failing)
    metrics = {
        "receiver_layer": receiver.layer, "receiver_head": receiver.index, "edit_sender_layer": sender.layer,
        "edit_sender_head": sender.index, "edit_comp": comp, "edit_alpha": alpha, "edit_applied": int(alpha != 1.0),
        "select_accuracy_before": base["accuracy"], "select_accuracy_after": float(chosen["select_accuracy"]),
        "select_margin_before": base["margin"], "select_margin_after": float(chosen["select_margin"]),
        "n_select": len(select_rows), "n_select_failing": int(at_failing.sum()), "n_test": len(test_rows),
        **acc_metrics, **summary_metrics(channels, inhibition, weights, logits),
    }
    tensors = {"ov_out": comps.ov_out, "ov_s": comps.ov_s, "qk_s": comps.qk_s, "ov_in": comps.ov_in,
               "qk_q": comps.qk_q, "qk_k": comps.qk_k}
    tables = {"top_channels": channels, "head_composition": pairs, "inhibition": inhibition, "edit_trials": trials,
              "laundry_accuracy": table, "headline": headline_frame(loaded.card.name, metrics, failing)}
    return TalkingHeadsResult(metrics, tables, tensors, _info(loaded.card.name, seed, s, edit, floor, failing, spec, channels))


def _configured_receiver(spec, s) -> Component | None:
    """``weights.talking_heads.receiver`` parsed (None: chosen from data), refusing a model with fewer than
    two layers or a receiver that is not a head of layers 1.. before any work."""
    if spec.n_layers < 2:
        raise ValueError(f"the talking_heads study needs at least 2 layers (a sender before the receiver); "
                         f"model_type={spec.model_type!r} has {spec.n_layers}")
    if not s.receiver:
        return None
    receiver = Component.parse(s.receiver)
    if not 1 <= receiver.layer < spec.n_layers or not receiver.index < spec.n_heads:
        raise ValueError(f"weights.talking_heads.receiver={s.receiver!r} is not a head of layers 1..{spec.n_layers - 1}")
    return receiver


def _info(model: str, seed: int, s, edit: dict, floor: dict | None, failing: list[int], spec, channels) -> dict:
    return {"model": model, "seed": seed, "settings": asdict(s), "edit": written_edit(edit), "failing_lengths": failing,
            "random_component": written_edit(floor) if floor else None, "architecture": spec.to_dict(),
            "top_channel": " ".join(str(channels[c].iloc[0])
                                    for c in ("mode", "sender", "sender_comp", "receiver", "receiver_comp"))}


def written_edit(edit: dict) -> dict:
    """The edit as ``info.json`` and the edited model's card write it: sender and receiver heads as ``L3H1``."""
    return {**edit, "sender": edit["sender"].name, "receiver": edit["receiver"].name}


def held_out_logits(loaded, model_folder, spec, weights, comps, test: LaundryBatch, edit: dict, batch_size: int,
                    out_dir, floor: dict | None = None) -> dict[str, torch.Tensor]:
    """Final-position logits (batch, d_vocab) on the held-out prompts: before, with the activation edit,
    with the weight edit — the latter from the saved folder reloaded with stock
    ``AutoModelForCausalLM.from_pretrained`` when ``out_dir`` is given (else from the edited copy) — and,
    given a ``floor`` (:func:`random_component`), with its activation edit. ``edit``: ``sender`` and
    ``receiver`` heads, ``comp`` and ``alpha``."""
    import copy

    from interpipe.models import describe, save_model_folder

    model = loaded.model
    sender, comp, alpha = edit["sender"], edit["comp"], edit["alpha"]
    before = run_laundry(model, spec, test, batch_size)[0]

    def activation_edit(head: Component) -> torch.Tensor:
        if alpha == 1.0:  # no edit won the selection: every edit is the identity
            return before
        read, write = edit_vectors(weights, comps, head, comp)
        hook = scale_component_hook(alpha, head.index, read, write)
        return run_laundry(model, spec, test, batch_size, edits=[(head.layer, hook)])[0]

    act = activation_edit(sender)
    floor_logits = {} if floor is None else {"random_component": activation_edit(floor["sender"])}
    edited = copy.deepcopy(model)
    apply_weight_edit(edited, spec, comps, sender, comp, alpha)
    if out_dir is not None:
        folder = Path(out_dir) / "model_edited"
        card = describe(edited, f"{loaded.card.name}-talking-heads-edit", str(model_folder), loaded.card.kind,
                        extra={"edit": written_edit(edit), "base_model": loaded.card.name})
        save_model_folder(folder, edited, loaded.tokenizer, card)
        del edited
        edited = load_stock(folder)
    weight = before if alpha == 1.0 and out_dir is None else run_laundry(edited, spec, test, batch_size)[0]
    return {"before": before, "activation_edit": act, "weight_edit": weight, **floor_logits}


def load_stock(folder):
    """A model folder loaded with plain ``transformers`` (no interpipe loader), float32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
