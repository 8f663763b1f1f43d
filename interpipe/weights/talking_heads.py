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

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interpipe.components import Component
from interpipe.weights.common import out_projection
from interpipe.weights.result import StudyResult
from interpipe.weights.laundry import LaundryBatch, correct, laundry_forward, laundry_rows, run_laundry

VARIANTS = ("before", "activation_edit", "weight_edit")


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
    """Try each scale on the ``n_candidates`` most inhibiting components (selection prompts,
    ``base_logits`` their logits without an edit). ``alpha = 1`` needs no forward (it is the
    unedited model). Returns the trials (DataFrame, best first: highest selection accuracy, then
    ``alpha = 1``, then the smallest change ``|log alpha|``) and the selection accuracy without an edit."""
    import pandas as pd

    base_acc = float(correct(base_logits, select).mean())
    trials = []
    top = inhibition.head(n_candidates)
    candidates = [(Component.parse(sender), int(comp)) for sender, comp in zip(top["sender"], top["comp"])]
    for (sender, comp), alpha in tqdm([(c, alpha) for c in candidates for alpha in scales], desc="edit trials"):
        read, write = edit_vectors(weights, comps, sender, comp)
        if alpha == 1.0:
            acc = base_acc
        else:
            hook = scale_component_hook(alpha, sender.index, read, write)
            logits, _ = run_laundry(model, spec, select, batch_size, edits=[(sender.layer, hook)])
            acc = float(correct(logits, select).mean())
        trials.append({"sender": sender.name, "comp": comp, "alpha": float(alpha), "select_accuracy": acc})
    trials = pd.DataFrame(trials)
    change = np.abs(np.log(np.maximum(trials["alpha"].to_numpy(), 1e-3)))  # alpha = 0 ranks as the largest change
    trials = trials.assign(_no_edit=(trials["alpha"] != 1.0).astype(int), _change=change)
    trials = trials.sort_values(["select_accuracy", "_no_edit", "_change"], ascending=[False, True, True], kind="stable")
    return trials.drop(columns=["_no_edit", "_change"]).reset_index(drop=True), base_acc


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
    if spec.n_layers < 2:
        raise ValueError(f"the talking_heads study needs at least 2 layers (a sender before the receiver); "
                         f"model_type={spec.model_type!r} has {spec.n_layers}")
    if s.receiver:
        receiver = Component.parse(s.receiver)
        if not 1 <= receiver.layer < spec.n_layers or not receiver.index < spec.n_heads:
            raise ValueError(f"weights.talking_heads.receiver={s.receiver!r} is not a head of layers 1..{spec.n_layers - 1}")
    select_rows, test_rows = evaluation_prompts(data_root, s, seed, context_length(model), tok)
    weights = folded_head_weights(boot_bridge(model, tok, model_folder), model, spec)  # the bridge is freed here
    comps = head_components(weights, s.n_components)
    channels, pairs = top_channels(comps, s.top_channels), head_pair_frame(comps)

    select, test = LaundryBatch(tok, model, select_rows), LaundryBatch(tok, model, test_rows)
    if s.receiver:
        select_logits = run_laundry(model, spec, select, batch_size)[0]
    else:
        receiver, select_logits = pick_receiver(model, spec, select, batch_size)
    probe = LaundryBatch(tok, model, select_rows[: s.n_inhibition_prompts])
    inhibition, _ = inhibition_scores(model, spec, weights, comps, probe, receiver,
                                      min(s.inhibition_components, s.n_components), batch_size, s.max_senders)
    trials, base_acc = choose_edit(model, spec, weights, comps, inhibition, select, select_logits, s.edit_scales,
                                   s.edit_candidates, batch_size)
    chosen = trials.iloc[0]
    sender, comp, alpha = Component.parse(chosen["sender"]), int(chosen["comp"]), float(chosen["alpha"])
    edit = {"sender": sender, "comp": comp, "alpha": alpha, "receiver": receiver}

    logits = held_out_logits(loaded, model_folder, spec, weights, comps, test, edit, batch_size, out_dir)
    table, acc_metrics = accuracy_table(test, logits, s.select_lengths)
    metrics = {
        "receiver_layer": receiver.layer, "receiver_head": receiver.index, "edit_sender_layer": sender.layer,
        "edit_sender_head": sender.index, "edit_comp": comp, "edit_alpha": alpha, "edit_applied": int(alpha != 1.0),
        "select_accuracy_before": base_acc, "select_accuracy_after": float(chosen["select_accuracy"]),
        "n_select": len(select_rows), "n_test": len(test_rows),
        **acc_metrics, **summary_metrics(channels, inhibition, weights, logits),
    }
    tensors = {"ov_out": comps.ov_out, "ov_s": comps.ov_s, "qk_s": comps.qk_s, "ov_in": comps.ov_in,
               "qk_q": comps.qk_q, "qk_k": comps.qk_k}
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "edit": written_edit(edit),
            "architecture": spec.to_dict(),
            "top_channel": " ".join(str(channels[c].iloc[0]) for c in ("mode", "sender", "sender_comp", "receiver", "receiver_comp"))}
    tables = {"top_channels": channels, "head_composition": pairs, "inhibition": inhibition, "edit_trials": trials,
              "laundry_accuracy": table, "headline": headline_frame(loaded.card.name, metrics, s.select_lengths)}
    return TalkingHeadsResult(metrics, tables, tensors, info)


def written_edit(edit: dict) -> dict:
    """The edit as ``info.json`` and the edited model's card write it: sender and receiver heads as ``L3H1``."""
    return {**edit, "sender": edit["sender"].name, "receiver": edit["receiver"].name}


def held_out_logits(loaded, model_folder, spec, weights, comps, test: LaundryBatch, edit: dict, batch_size: int,
                    out_dir) -> dict[str, torch.Tensor]:
    """Final-position logits (batch, d_vocab) on the held-out prompts: before, with the activation edit,
    and with the weight edit — the latter from the saved folder reloaded with stock
    ``AutoModelForCausalLM.from_pretrained`` when ``out_dir`` is given (else from the edited copy).
    ``edit``: ``sender`` and ``receiver`` heads, ``comp`` and ``alpha``."""
    import copy

    from interpipe.models import describe, save_model_folder

    model = loaded.model
    sender, comp, alpha = edit["sender"], edit["comp"], edit["alpha"]
    before = run_laundry(model, spec, test, batch_size)[0]
    if alpha == 1.0:  # no edit won the selection: both edits are the identity
        act = before
    else:
        read, write = edit_vectors(weights, comps, sender, comp)
        hook = scale_component_hook(alpha, sender.index, read, write)
        act = run_laundry(model, spec, test, batch_size, edits=[(sender.layer, hook)])[0]
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
    return {"before": before, "activation_edit": act, "weight_edit": weight}


def load_stock(folder):
    """A model folder loaded with plain ``transformers`` (no interpipe loader), float32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def accuracy_table(test: LaundryBatch, logits: dict[str, torch.Tensor], failing: list[int]):
    """Held-out accuracy by length for every variant with bootstrap intervals over prompts, and the
    paired gain of each edit over ``before`` at each length and pooled over the ``failing`` lengths.
    Returns (tidy DataFrame, flat metrics)."""
    import pandas as pd

    from interpipe.stats import bootstrap, to_metrics

    paired = lambda a, b: float(np.mean(a - b))  # noqa: E731
    ok = {k: correct(v, test).numpy() for k, v in logits.items()}  # (batch,) each
    lengths = test.lengths.numpy()
    groups = [(f"len{n}", lengths == n) for n in sorted(set(lengths.tolist()))]
    groups += [("all", np.ones_like(lengths, dtype=bool)), ("failing", np.isin(lengths, failing))]
    rows, metrics = [], {}
    for name, sel in groups:
        if not sel.any():
            continue
        row = {"group": name, "n": int(sel.sum())}
        for k in VARIANTS:
            iv = bootstrap(ok[k][sel])
            metrics.update(to_metrics(f"accuracy_{name}_{k}", iv))
            row.update({k: iv.estimate, f"{k}_ci_low": iv.low, f"{k}_ci_high": iv.high})
        for k in VARIANTS[1:]:
            iv = bootstrap(ok[k][sel], ok["before"][sel], statistic=paired)
            metrics.update(to_metrics(f"gain_{name}_{k}", iv))
            row.update({f"gain_{k}": iv.estimate, f"gain_{k}_ci_low": iv.low, f"gain_{k}_ci_high": iv.high})
        rows.append(row)
    if "gain_failing_weight_edit" in metrics:
        metrics["gain_failing_real"] = int(metrics["gain_failing_weight_edit_ci_low"] > 0)  # paired interval above 0
    return pd.DataFrame(rows), metrics


def headline_frame(model: str, metrics: dict, failing: list[int]):
    """The quoted numbers: held-out accuracy at the failing lengths after the weight edit (baseline:
    the unedited model), the paired gain there (baseline 0), and accuracy over all lengths."""
    import pandas as pd

    rows = []
    for group in ("failing", "all"):
        for variant in VARIANTS[1:]:
            key = f"accuracy_{group}_{variant}"
            if key in metrics:
                rows.append({"model": model, "task": "laundry_list", "method": variant, "metric": f"accuracy_{group}",
                             "value": metrics[key], "ci_low": metrics[key + "_ci_low"], "ci_high": metrics[key + "_ci_high"],
                             "baseline": "unedited model", "baseline_value": metrics[f"accuracy_{group}_before"],
                             "note": f"failing lengths {list(failing)}" if group == "failing" else "every held-out length"})
        key = f"gain_{group}_weight_edit"
        if key in metrics:
            rows.append({"model": model, "task": "laundry_list", "method": "weight_edit", "metric": f"gain_{group}",
                         "value": metrics[key], "ci_low": metrics[key + "_ci_low"], "ci_high": metrics[key + "_ci_high"],
                         "baseline": "no change", "baseline_value": 0.0, "note": "paired over the same held-out prompts"})
    return pd.DataFrame(rows)


def summary_metrics(channels, inhibition, weights, logits: dict) -> dict:
    """Top channel against its random baseline, inhibition, weight vs activation edit agreement."""
    from scipy import stats

    from interpipe.weights.composition import random_baseline

    metrics = {
        "top_channel_score": float(channels["score"].iloc[0]),
        "random_pair_baseline": random_baseline(weights.W_O.shape[-1]),
        "inhibition_top": float(inhibition["inhibition"].iloc[0]),
        "inhibition_top_first_mention": float(inhibition["inhibition_first_mention"].iloc[0]),
        "edit_max_logit_gap": float((logits["weight_edit"] - logits["activation_edit"]).abs().max()),  # ~0 expected
    }
    if len(inhibition) >= 2:
        r_q = stats.pearsonr(inhibition["Q_composition"], inhibition["inhibition"])
        rho_q = stats.spearmanr(inhibition["Q_composition"], inhibition["inhibition"])
        for name, value in (("pearson", r_q.statistic), ("spearman", rho_q.statistic)):
            if math.isfinite(float(value)):  # undefined for constant scores
                metrics[f"inhibition_vs_q_composition_{name}"] = float(value)
    return metrics
