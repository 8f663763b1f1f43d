"""Wrapping a model in TransformerLens's ``TransformerBridge`` and preparing clean/corrupted batches.

TransformerLens 4.x ``TransformerBridge.boot_transformers`` wraps any Hugging Face model (a hub
name or a local folder) and exposes the standard hook names (``blocks.{L}.hook_resid_pre``,
``blocks.{L}.attn.hook_z``, ``blocks.{L}.attn.hook_pattern``, ...), so nothing here is written
per architecture. The model itself is loaded through :func:`interpipe.models.load_pretrained`
(fast, explicit failure offline) and handed to the bridge as ``hf_model``. Before the bridge is
built, :func:`interpipe.models.arch.describe_architecture` says what the model is; a family the
study cannot handle (an encoder, an undescribed ``model_type``) is refused there, naming its
``model_type``. :func:`architecture` gives the same description of a loaded bridge, so analyses
read head counts (query heads, key/value heads) and positions from one place.

A :class:`PromptBatch` holds clean and corrupted token ids (right-padded; the model is causal,
so padding after the answer position never reaches it), the answer and foil token ids, and the
answer position of every prompt (its last prompt token, whose next-token logits are read).
It also names each prompt's *template group* (the task's template and the prompt's token length:
prompts of one group have the same role at every position) and carries the *reference
distribution* the mean ablation averages over: corrupted prompts (for IOI the ABC prompts of
Wang et al. 2022) with their groups, the batch's own corrupted prompts plus up to
``reference_prompts`` more examples of the split.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import torch

from interpipe.models.arch import ArchSpec, describe_architecture
from interpipe.models.tokens import adds_bos, answer_token_id, pad_rows
from interpipe.typing import Int, Tensor, TokenIds

MISMATCH_POLICIES = ("error", "skip")
STUDY = "circuits"
NEEDS = ("causal",)  # next-token logits at the answer position; any norm, block style, positions or GQA
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def load_bridge(source: str | Path, device: str = "cpu", dtype: str = "float32",
                revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Load a causal LM (folder or hub name) and wrap it in a ``TransformerBridge`` in eval mode.

    Raises :class:`~interpipe.models.arch.UnsupportedArchitecture` naming the ``model_type`` when the
    study cannot run on the family (checked before the bridge is built), ``ValueError`` naming the
    model when TransformerBridge cannot wrap it.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from interpipe.models import load_pretrained
    from interpipe.runtime import resolve_dtype

    model, tokenizer, _ = load_pretrained(str(source), "causal_lm", revision=revision, device=device, dtype=dtype,
                                          trust_remote_code=trust_remote_code, attn_implementation="eager")
    describe_architecture(model).require(STUDY, needs=NEEDS)
    prepend_bos = adds_bos(tokenizer)  # read before the bridge wraps the tokenizer (it adds a BOS to it)
    try:
        bridge = TransformerBridge.boot_transformers(str(source), hf_model=model, tokenizer=tokenizer,
                                                     device=device, dtype=resolve_dtype(dtype))
    except Exception as exc:  # noqa: BLE001 - re-raised naming the model
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        raise ValueError(f"TransformerBridge cannot wrap model {str(source)!r} (architecture {arch}): {exc}") from exc
    bridge.cfg.default_prepend_bos = prepend_bos  # the tokenizer's own rule, as every other study
    bridge.eval()
    return bridge


def architecture(bridge: Any) -> ArchSpec:
    """The :class:`~interpipe.models.arch.ArchSpec` of the model inside ``bridge`` (cheap: reads config and module paths)."""
    return describe_architecture(bridge.original_model)


def hook_layer(name: str) -> int | None:
    """The block index of a hook name (``blocks.3.attn.hook_z`` -> 3), None outside the blocks."""
    match = _BLOCK_RE.match(name)
    return int(match.group(1)) if match else None


def hook_names(bridge: Any) -> frozenset[str]:
    """Every hook point name of ``bridge``, aliases included.

    ``TransformerBridge.hook_dict`` is a property that copies the hook registry and resolves every
    alias on each access (about 0.1 ms for 12 GPT-2 blocks): a caller checking many names builds
    this set once and passes it to :func:`check_hook`.
    """
    return frozenset(bridge.hook_dict)


def check_hook(bridge: Any, name: str, patchable: bool = True, hooks: Collection[str] | None = None) -> str:
    """Return ``name`` if the bridge has that hook point, else raise ``ValueError`` naming it.

    ``hooks`` is the bridge's :func:`hook_names` when the caller has them (built here otherwise).
    With ``patchable``, hooks after the last block (final LayerNorm, unembedding) are refused too.
    """
    hooks = hook_names(bridge) if hooks is None else hooks
    if name not in hooks:
        close = difflib.get_close_matches(name, sorted(hooks), n=3)
        raise ValueError(f"unknown hook {name!r}: the model has no such hook point"
                         + (f"; did you mean {close}?" if close else ""))
    if patchable and name.startswith(("ln_final.", "unembed.", "hook_unembed")):
        raise ValueError(f"hook {name!r} lies after the last block; patch blocks.{{L}}.hook_resid_post instead")
    return name


def check_head(bridge: Any, layer: int, head: int) -> tuple[int, int]:
    """Validate a (layer, head) pair against the model's shape, naming the bad index."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    if not 0 <= int(head) < n_heads:
        raise ValueError(f"head index {head} in layer {layer} is out of range: the model has {n_heads} heads "
                         f"per layer (0..{n_heads - 1})")
    return int(layer), int(head)


@dataclass
class PromptBatch:
    """Clean and corrupted prompts as token ids, with the answer/foil ids and answer positions.

    ``answer_pos[b]`` is the index of the last token of prompt ``b``; its logits predict the answer.
    """

    clean_tokens: TokenIds
    corrupted_tokens: TokenIds
    answer_ids: Int[Tensor, "batch"]
    foil_ids: Int[Tensor, "batch"]
    answer_pos: Int[Tensor, "batch"]
    prompts: list[str] = field(default_factory=list)
    corrupted_prompts: list[str] = field(default_factory=list)
    str_tokens: list[str] = field(default_factory=list)  # tokens of the first prompt (axis labels)
    skipped: int = 0  # prompts dropped for a clean/corrupted length mismatch
    groups: list[str] = field(default_factory=list)  # template group of each prompt ("<template>|<n tokens>")
    reference_tokens: Int[Tensor, "ref ref_pos"] | None = None  # corrupted prompts the mean ablation averages over
    reference_pos: Int[Tensor, "ref"] | None = None  # last real position of each reference prompt
    reference_groups: list[str] = field(default_factory=list)  # template group of each reference prompt

    @property
    def size(self) -> int:
        return int(self.clean_tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.clean_tokens.shape[1])

    def to(self, device: torch.device | str) -> "PromptBatch":
        for name in ("clean_tokens", "corrupted_tokens", "answer_ids", "foil_ids", "answer_pos", "reference_tokens",
                     "reference_pos"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def subset(self, rows: Sequence[int]) -> "PromptBatch":
        """The prompts ``rows`` (same reference distribution), cut to their longest prompt."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        if index.numel() == 0:
            raise ValueError("a prompt subset needs at least one prompt")
        on = index.to(self.clean_tokens.device)
        n_pos = int(self.answer_pos[on].max()) + 1
        pick = lambda items: [items[i] for i in index.tolist()] if items else []  # noqa: E731
        return PromptBatch(self.clean_tokens[on, :n_pos], self.corrupted_tokens[on, :n_pos], self.answer_ids[on],
                           self.foil_ids[on], self.answer_pos[on], pick(self.prompts), pick(self.corrupted_prompts),
                           self.str_tokens if int(index[0]) == 0 else [], 0, pick(self.groups),
                           self.reference_tokens, self.reference_pos, list(self.reference_groups))

    def half_rows(self) -> tuple[list[int], list[int]]:
        """(selection, held-out) prompt indices: even and odd (examples are drawn independently)."""
        if self.size < 2:
            raise ValueError(f"splitting into a selection and a held-out half needs >= 2 prompts, got {self.size}")
        return list(range(0, self.size, 2)), list(range(1, self.size, 2))

    def halves(self) -> tuple["PromptBatch", "PromptBatch"]:
        """(selection, held-out) halves, the prompts of :meth:`half_rows`."""
        select, heldout = self.half_rows()
        return self.subset(select), self.subset(heldout)

    def shared_prefix(self) -> int:
        """Number of leading positions where every clean prompt equals its corrupted prompt.

        Activations there are identical in both runs (the model is causal), so patching them is a no-op.
        """
        same = (self.clean_tokens == self.corrupted_tokens).all(0)  # (pos,)
        differ = (~same).nonzero()
        return int(differ[0, 0]) if differ.numel() else self.n_pos

    def position_labels(self) -> list[str]:
        """``"i:token"`` labels of the first prompt, ``"i"`` beyond it."""
        return [f"{i}:{self.str_tokens[i]}" if i < len(self.str_tokens) else str(i) for i in range(self.n_pos)]


def _mismatch(bridge: Any, i: int, clean: str, c_ids: torch.Tensor, x_ids: torch.Tensor, answer: str,
              foil: str) -> str | None:
    """Why prompt ``i`` cannot be patched (clean and corrupted lengths differ, a multi-token answer or
    foil under :func:`~interpipe.models.tokens.answer_token_id`), or None."""
    if c_ids.shape[0] != x_ids.shape[0]:
        return (f"prompt {i} {clean!r} tokenizes to {c_ids.shape[0]} tokens but its corrupted prompt "
                f"has {x_ids.shape[0]}; patching needs equal lengths")
    for word in (answer, foil):
        try:
            answer_token_id(bridge.tokenizer, word.strip())
        except ValueError as err:
            return f"prompt {i} {clean!r}: {err}"
    return None


def group_name(template: str, n_tokens: int) -> str:
    """The template group of a prompt: its template and token length (``"ioi|3|15"``)."""
    return f"{template}|{int(n_tokens)}"


# leading fields of a prepared example's ``key`` that name its template (interpipe.data.tasks): IOI and
# SVA keys carry the template index, Colored Objects its form, Laundry List its length; induction prompts
# share one structure (a repeated random sequence), so the token length alone aligns them
TEMPLATE_FIELDS = {"ioi": 2, "sva": 2, "colored_objects": 2, "laundry_list": 2, "induction": 1}


def template_of(task: str, key: str) -> str:
    """The template label of an example of ``task`` from its ``key`` (unknown tasks: the task name)."""
    return "|".join(str(key).split("|")[: TEMPLATE_FIELDS.get(task, 1)])


def make_batch(bridge: Any, prompts: Sequence[str], corrupted_prompts: Sequence[str], answers: Sequence[str],
               foils: Sequence[str], on_mismatch: str = "error", templates: Sequence[str] | None = None,
               reference_prompts: Sequence[str] = (), reference_templates: Sequence[str] = ()) -> PromptBatch:
    """Tokenize clean/corrupted prompts (BOS as the model's config says) into a :class:`PromptBatch`.

    Answers and foils are token ids by the one answer rule of every study,
    :func:`interpipe.models.tokens.answer_token_id` (the word after one space, a single token). A
    prompt whose corrupted counterpart tokenizes to a different length, or whose answer or foil is
    several tokens, raises ``ValueError`` naming it (``on_mismatch="error"``) or is dropped (``"skip"``). ``templates`` name each prompt's
    template (default: one template for all); the mean-ablation reference is the corrupted prompts
    plus ``reference_prompts`` (corrupted prompts of other examples, with ``reference_templates``).
    """
    if on_mismatch not in MISMATCH_POLICIES:
        raise ValueError(f"circuits.on_mismatch={on_mismatch!r} is not one of {MISMATCH_POLICIES}")
    if not (len(prompts) == len(corrupted_prompts) == len(answers) == len(foils)):
        raise ValueError("prompts, corrupted prompts, answers and foils must have the same length")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    rows, kept, skipped = [], [], 0
    for i, (clean, corrupted) in enumerate(zip(prompts, corrupted_prompts)):
        c_ids = bridge.to_tokens(clean)[0]
        x_ids = bridge.to_tokens(corrupted)[0]
        problem = _mismatch(bridge, i, clean, c_ids, x_ids, answers[i], foils[i])
        if problem:
            if on_mismatch == "skip":
                skipped += 1
                continue
            raise ValueError(f"{problem} (or set circuits.on_mismatch=skip)")
        answer, foil = (answer_token_id(bridge.tokenizer, w.strip()) for w in (answers[i], foils[i]))
        if answer == foil:
            raise ValueError(f"prompt {i} {clean!r}: answer {answers[i]!r} and foil {foils[i]!r} share their first token")
        rows.append((c_ids, x_ids, answer, foil))
        kept.append(i)
    if not rows:
        raise ValueError(f"all {len(prompts)} prompts were skipped: clean and corrupted lengths differ for every one")
    pad = bridge.tokenizer.pad_token_id if bridge.tokenizer.pad_token_id is not None else 0
    clean, _ = pad_rows([r[0] for r in rows], pad)  # (batch, pos), right-padded
    corrupt, _ = pad_rows([r[1] for r in rows], pad)  # (batch, pos): each as long as its clean prompt
    first = rows[0][0]
    templates = list(templates) if templates is not None else ["all"] * len(prompts)
    groups = [group_name(templates[i], r[0].shape[0]) for i, r in zip(kept, rows)]
    ref_ids = [r[1] for r in rows] + [bridge.to_tokens(p)[0] for p in reference_prompts]
    ref_groups = groups + [group_name(t, ids.shape[0]) for t, ids in zip(reference_templates, ref_ids[len(rows):])]
    reference, _ = pad_rows(ref_ids, pad)  # (ref, ref_pos)
    return PromptBatch(
        clean_tokens=clean, corrupted_tokens=corrupt,
        answer_ids=torch.tensor([r[2] for r in rows]), foil_ids=torch.tensor([r[3] for r in rows]),
        answer_pos=torch.tensor([r[0].shape[0] - 1 for r in rows]),
        prompts=[prompts[i] for i in kept], corrupted_prompts=[corrupted_prompts[i] for i in kept],
        str_tokens=[bridge.tokenizer.decode([int(t)]).strip() or repr(bridge.tokenizer.decode([int(t)])) for t in first],
        skipped=skipped, groups=groups, reference_tokens=reference,
        reference_pos=torch.tensor([ids.shape[0] - 1 for ids in ref_ids]), reference_groups=ref_groups,
    ).to(bridge.cfg.device)


def batch_from_task(bridge: Any, data_root: str | Path, task: str, n_prompts: int, split: str = "test",
                    on_mismatch: str = "error", reference_prompts: int = 0) -> PromptBatch:
    """The first ``n_prompts`` examples of a prepared task as a :class:`PromptBatch`.

    The corrupted prompts of the next ``reference_prompts`` examples join the mean-ablation reference.
    """
    from interpipe.data import load_task

    table = load_task(data_root, task, split)
    rows = table.select(range(min(n_prompts, len(table))))
    stop = min(len(rows) + reference_prompts, len(table))
    extra = table.select(range(len(rows), stop)) if stop > len(rows) else {"corrupted_prompt": [], "key": []}
    return make_batch(bridge, rows["prompt"], rows["corrupted_prompt"], rows["answer"], rows["foil"], on_mismatch,
                      templates=[template_of(task, k) for k in rows["key"]], reference_prompts=extra["corrupted_prompt"],
                      reference_templates=[template_of(task, k) for k in extra["key"]])
