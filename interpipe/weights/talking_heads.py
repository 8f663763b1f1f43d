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
  ``blocks.L.attn.hook_z`` (``z_h += (alpha - 1)(z_h . W_O[h] v) c`` with ``c W_O[h] = v``; the two
  agree up to the all-ones direction, which every reader's LayerNorm removes). The component and
  ``alpha`` are chosen on training-split prompts; accuracy against list length is reported on
  held-out prompts before and after.

The paper's prompt format and edit formula are not published; these are the choices made here.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
from interpipe.weights.common import StudyResult, out_projection

HOOK_Z = "blocks.{layer}.attn.hook_z"
HOOK_PATTERN = "blocks.{layer}.attn.hook_pattern"


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
    """A ``hook_z`` hook scaling one OV component of ``head`` by ``alpha`` (0 removes it)."""
    def hook(z, hook=None):  # z: (batch, pos, head, d_head)
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
def apply_weight_edit(model, bridge, components, layer: int, head: int, comp: int, alpha: float) -> None:
    """Scale OV component ``comp`` of head ``layer.head`` by ``alpha`` in ``model``'s weights (in place):
    ``W_O[h] += (alpha - 1) (W_O[h] v) v^T``. ``bridge`` wraps a copy of the unedited ``model``."""
    weight, conv1d = out_projection(model, bridge, layer)
    v = components.ov_out[layer, head, comp].to(weight.device)  # (d_model,)
    d_head = bridge.cfg.d_head
    rows = slice(head * d_head, (head + 1) * d_head)
    w_o = weight[rows] if conv1d else weight[:, rows].T  # (d_head, d_model)
    delta = (alpha - 1.0) * torch.outer(w_o.float() @ v, v)  # (d_head, d_model)
    if conv1d:
        weight[rows] += delta.to(weight.dtype)
    else:
        weight[:, rows] += delta.T.to(weight.dtype)


@torch.no_grad()
def run_laundry(bridge, batch: LaundryBatch, batch_size: int, hooks=(), receiver: tuple[int, int] | None = None):
    """Final-position logits (batch, d_vocab) and, with ``receiver``, its attention (batch, k_pos)."""
    logits, attn = [], []
    for i in range(0, len(batch.ids), batch_size):
        sl = slice(i, i + batch_size)
        fwd = list(hooks)
        if receiver is not None:
            layer, head = receiver
            last = batch.last[sl]
            fwd.append((HOOK_PATTERN.format(layer=layer),
                        lambda p, hook, last=last: attn.append(p[torch.arange(len(last)), head, last.to(p.device)].float().cpu())))
        ids = batch.ids[sl].to(bridge.cfg.device or "cpu")
        out = (bridge.run_with_hooks(ids, fwd_hooks=fwd) if fwd else bridge(ids)).float().cpu()
        logits.append(out[torch.arange(len(batch.last[sl])), batch.last[sl]])  # (b, V)
    return torch.cat(logits), (torch.cat(attn) if attn else None)


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


def inhibition_scores(bridge, weights, components, batch: LaundryBatch, receiver: tuple[int, int],
                      n_comp: int, batch_size: int):
    """Data-based inhibition of every sender component (layers before the receiver) on the receiver."""
    import pandas as pd

    from interpipe.weights.composition import component_matrix_composition

    _, clean = run_laundry(bridge, batch, batch_size, receiver=receiver)
    base_rep = (clean * batch.repeated[:, :clean.shape[1]]).sum(-1)  # (batch,)
    wq = {m: component_matrix_composition(weights, components, m)[..., receiver[0], receiver[1]] for m in "QKV"}
    rows = []
    jobs = [(l, h, c) for l in range(receiver[0]) for h in range(weights.n_heads) for c in range(n_comp)]
    for layer, head, comp in tqdm(jobs, desc="inhibition scores"):
        read, write = edit_vectors(weights, components, layer, head, comp)
        hook = (HOOK_Z.format(layer=layer), scale_component_hook(0.0, head, read, write))
        _, attn = run_laundry(bridge, batch, batch_size, hooks=[hook], receiver=receiver)
        rep = (attn * batch.repeated[:, :attn.shape[1]]).sum(-1)
        ans = attn[torch.arange(len(attn)), batch.answer_pos] - clean[torch.arange(len(clean)), batch.answer_pos]
        rows.append({"sender": f"{layer}.{head}", "comp": comp, "singular_value": float(components.ov_s[layer, head, comp]),
                     "inhibition": float((rep - base_rep).mean()), "delta_attn_answer": float(ans.mean()),
                     **{f"{m}_composition": float(wq[m][layer, head, comp]) for m in "QKV"}})
    return pd.DataFrame(rows).sort_values("inhibition", ascending=False).reset_index(drop=True), clean


@torch.no_grad()
def pick_receiver(bridge, batch: LaundryBatch) -> tuple[int, int]:
    """The head (layer >= 1) whose final-position attention to the kept item is largest on average
    (one forward pass reading every layer's pattern)."""
    idx = torch.arange(len(batch.ids))
    to_answer = {}

    def read(p, hook):  # p: (batch, head, q_pos, k_pos)
        to_answer[hook.name] = p.cpu()[idx, :, batch.last, batch.answer_pos].float().mean(0)  # (head,)

    names = [HOOK_PATTERN.format(layer=layer) for layer in range(1, bridge.cfg.n_layers)]
    bridge.run_with_hooks(batch.ids.to(bridge.cfg.device or "cpu"), fwd_hooks=[(name, read) for name in names])
    scores = torch.stack([to_answer[name] for name in names])  # (layer - 1, head)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return layer + 1, head


@torch.no_grad()
def hf_final_logits(model, batch: LaundryBatch, batch_size: int) -> torch.Tensor:
    """Final-position logits (batch, d_vocab) of a plain HF model."""
    out = []
    for i in range(0, len(batch.ids), batch_size):
        sl = slice(i, i + batch_size)
        logits = model(input_ids=batch.ids[sl].to(next(model.parameters()).device)).logits.float().cpu()
        out.append(logits[torch.arange(len(batch.last[sl])), batch.last[sl]])  # (b, V)
    return torch.cat(out)


def run_talking_heads(loaded, model_folder: str | Path, data_root: str | Path, settings, seed: int = 0,
                      batch_size: int = 64, out_dir: str | Path | None = None) -> TalkingHeadsResult:
    """The whole Talking Heads study on one model; with ``out_dir``, also saves the edited model."""
    import copy

    import pandas as pd
    from scipy import stats

    from interpipe.data import load_task
    from interpipe.models import describe, save_model_folder
    from interpipe.weights.common import boot_bridge, folded_head_weights
    from interpipe.weights.composition import head_components, head_pair_frame, random_baseline, top_channels

    s = settings
    bridge = boot_bridge(loaded.model, loaded.tokenizer, model_folder)
    weights = folded_head_weights(bridge)
    comps = head_components(weights, s.n_components)
    channels, pairs = top_channels(comps, s.top_channels), head_pair_frame(comps)

    tok, model = loaded.tokenizer, loaded.model
    test_rows = list(load_task(data_root, "laundry_list", "test"))
    test_rows += generated_rows(s.extra_lengths, s.n_per_extra_length, seed, context_length(model), tok)
    test = LaundryBatch(tok, model, test_rows)
    select = LaundryBatch(tok, model, list(load_task(data_root, "laundry_list", "train"))[: s.n_select])
    receiver = tuple(int(x) for x in s.receiver.split(".")) if s.receiver else pick_receiver(bridge, select)
    if not 1 <= receiver[0] < bridge.cfg.n_layers or not 0 <= receiver[1] < bridge.cfg.n_heads:
        raise ValueError(f"weights.talking_heads.receiver={s.receiver!r} is not a head of layers 1..{bridge.cfg.n_layers - 1}")
    probe = LaundryBatch(tok, model, test_rows[: s.n_inhibition_prompts])
    inhibition, _ = inhibition_scores(bridge, weights, comps, probe, receiver, min(s.inhibition_components, s.n_components), batch_size)

    # choose the edit on training-split prompts
    base_sel, _ = run_laundry(bridge, select, batch_size)
    base_acc = float((base_sel.argmax(-1) == select.answers).float().mean())
    trials = []
    for _, row in inhibition.head(s.edit_candidates).iterrows():
        layer, head = (int(x) for x in row["sender"].split("."))
        read, write = edit_vectors(weights, comps, layer, head, int(row["comp"]))
        for alpha in s.edit_scales:
            hook = (HOOK_Z.format(layer=layer), scale_component_hook(alpha, head, read, write))
            logits, _ = run_laundry(bridge, select, batch_size, hooks=[hook])
            trials.append({"sender": row["sender"], "comp": int(row["comp"]), "alpha": float(alpha),
                           "select_accuracy": float((logits.argmax(-1) == select.answers).float().mean())})
    trials = pd.DataFrame(trials).sort_values("select_accuracy", ascending=False, kind="stable").reset_index(drop=True)
    chosen = trials.iloc[0]
    layer, head = (int(x) for x in chosen["sender"].split("."))
    comp, alpha = int(chosen["comp"]), float(chosen["alpha"])

    # held-out accuracy: before, activation edit, weight edit (a copy saved as a model folder)
    before, _ = run_laundry(bridge, test, batch_size)
    read, write = edit_vectors(weights, comps, layer, head, comp)
    act, _ = run_laundry(bridge, test, batch_size, hooks=[(HOOK_Z.format(layer=layer), scale_component_hook(alpha, head, read, write))])
    edited = copy.deepcopy(model)
    apply_weight_edit(edited, bridge, comps, layer, head, comp, alpha)
    wed = hf_final_logits(edited, test, batch_size)
    acc = {name: accuracy_by_length(lg, test) for name, lg in (("before", before), ("activation_edit", act), ("weight_edit", wed))}
    table = pd.DataFrame([{"n_items": n, "n": int((test.lengths == n).sum()), **{k: acc[k][n] for k in acc}}
                          for n in sorted(acc["before"])])
    edit = {"sender": f"{layer}.{head}", "comp": comp, "alpha": alpha, "receiver": f"{receiver[0]}.{receiver[1]}"}
    if out_dir is not None:
        card = describe(edited, f"{loaded.card.name}-talking-heads-edit", str(model_folder), loaded.card.kind,
                        extra={"edit": edit, "base_model": loaded.card.name})
        save_model_folder(Path(out_dir) / "model_edited", edited, tok, card)

    r_q = stats.pearsonr(inhibition["Q_composition"], inhibition["inhibition"])
    rho_q = stats.spearmanr(inhibition["Q_composition"], inhibition["inhibition"])
    all_correct = lambda lg: float((lg.argmax(-1) == test.answers).float().mean())  # noqa: E731
    metrics = {
        "receiver_layer": receiver[0], "receiver_head": receiver[1], "edit_sender_layer": layer,
        "edit_sender_head": head, "edit_comp": comp, "edit_alpha": alpha,
        "top_channel_score": float(channels["score"].iloc[0]),
        "random_pair_baseline": random_baseline(weights.W_O.shape[-1]),
        "inhibition_top": float(inhibition["inhibition"].iloc[0]),
        "select_accuracy_before": base_acc, "select_accuracy_after": float(chosen["select_accuracy"]),
        "edit_improves_selection": int(float(chosen["select_accuracy"]) > base_acc),  # 0: no tried edit helps
        "accuracy_before": all_correct(before), "accuracy_weight_edit": all_correct(wed),
        "accuracy_activation_edit": all_correct(act),
        "edit_max_logit_gap": float((wed - act).abs().max()),  # weight vs activation edit (should be ~0)
        **{f"accuracy_len{n}_{k}": acc[k][n] for k in acc for n in acc[k]},
    }
    for name, value in (("pearson", r_q.statistic), ("spearman", rho_q.statistic)):
        if math.isfinite(float(value)):  # undefined with fewer than 3 senders or constant scores
            metrics[f"inhibition_vs_q_composition_{name}"] = float(value)
    tensors = {"ov_out": comps.ov_out, "ov_s": comps.ov_s, "qk_s": comps.qk_s, "ov_in": comps.ov_in,
               "qk_q": comps.qk_q, "qk_k": comps.qk_k}
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "edit": edit,
            "top_channel": " ".join(str(channels[c].iloc[0]) for c in ("mode", "sender", "sender_comp", "receiver", "receiver_comp"))}
    return TalkingHeadsResult(metrics, {"top_channels": channels, "head_composition": pairs, "inhibition": inhibition,
                                        "edit_trials": trials, "laundry_accuracy": table}, tensors, info)
