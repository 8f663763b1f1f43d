"""A Hugging Face model read at one output position, with its own head exposed per token.

``ScoredModel`` hides the two model families the study covers:

- causal LMs (``AutoModelForCausalLM``): the output read is ``logits[b, score_pos[b]]`` over
  the vocabulary; the head is ``lm_head(final_norm(h))``;
- sequence classifiers (``AutoModelForSequenceClassification``): the output is the class logits;
  the head applied to a single token state ``h_i`` treats it as if it were the pooled token
  (BERT: ``classifier(pooler(h_i))``; RoBERTa/ELECTRA-style heads that read ``features[:, 0]``;
  DistilBERT's ``pre_classifier``; decoder classifiers' ``score``).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator

import torch

from interpipe.typing import Float, Int, Tensor

POST_HEAD_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _final_norm_of(model: torch.nn.Module) -> tuple[torch.nn.Module | None, str]:
    """The final norm (from :mod:`interpipe.models.arch`) and, when there is none, why."""
    from interpipe.models.arch import UnsupportedArchitecture, describe_architecture

    try:
        spec = describe_architecture(model)
    except UnsupportedArchitecture as exc:
        return None, str(exc)
    if spec.final_norm is None:
        return None, f"model_type={spec.model_type!r} has no final norm"
    return model.get_submodule(spec.final_norm), ""


def _classifier_head(model: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """``h: (n, d_model) -> logits: (n, n_classes)`` through the classifier's own head."""
    clf = getattr(model, "classifier", None)
    if clf is None and getattr(model, "score", None) is not None:
        return model.score  # decoder classifiers (GPT-2, Llama): a linear head on each token
    if clf is None:
        raise ValueError(f"{type(model).__name__} has no classification head (no .classifier or .score)")
    pooler = getattr(model, "pooler", None) or getattr(getattr(model, "base_model", None), "pooler", None)
    if pooler is not None:  # BERT / DeBERTa: pooler reads position 0 of a (n, 1, d) sequence
        return lambda h: clf(pooler(h[:, None, :]))  # (n, 1, d) -> (n, d) -> (n, C)
    pre = getattr(model, "pre_classifier", None)
    if pre is not None:  # DistilBERT
        return lambda h: clf(torch.relu(pre(h)))
    if isinstance(clf, torch.nn.Linear):
        return clf
    return lambda h: clf(h[:, None, :])  # RoBERTa / ELECTRA heads read features[:, 0, :]


class ScoredModel:
    """A model with a head, read at ``score_pos`` for each example."""

    def __init__(self, model: torch.nn.Module, kind: str):
        if kind not in ("causal_lm", "sequence_classifier"):
            raise ValueError(f"attribution needs a model with a head: kind={kind!r} is neither causal_lm nor "
                             f"sequence_classifier (load the model with its head, e.g. model.kind=sequence_classifier)")
        self.model, self.kind = model, kind
        self.embeddings = model.get_input_embeddings()
        if kind == "causal_lm":
            head = model.get_output_embeddings()
            if head is None:
                raise ValueError(f"{type(model).__name__} has no output embedding (LM head)")
            self.final_norm, self._no_final_norm = _final_norm_of(model)
            self.n_outputs = int(head.weight.shape[0])
            self._head = head
            # read the LM head only at the scored positions when the model supports it (HF >= 4.45)
            self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
            # a plain linear unembedding lets LogAt use only the target's row (no (pos, vocab) logits)
            self.row_head = isinstance(head, torch.nn.Linear) and not any(
                getattr(model.config, key, None) for key in POST_HEAD_KEYS)
        else:
            self._head = _classifier_head(model)
            self.final_norm = None
            self.n_outputs = int(model.config.num_labels)
        cfg = model.config
        self.n_layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))
        self.n_ctx = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 0) or 0)
        self.row_head = getattr(self, "row_head", False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_targets(self, targets: Int[Tensor, "batch"]) -> None:
        """Raise if a requested target lies outside the vocabulary / class set (-1 = predicted)."""
        bad = (targets >= self.n_outputs) | (targets < -1)
        if bad.any():
            raise ValueError(f"target ids {targets[bad].tolist()} lie outside the model's {self.n_outputs} outputs")

    def check_length(self, width: int) -> None:
        if self.n_ctx and width > self.n_ctx:
            raise ValueError(f"inputs are {width} tokens long but the model's context is {self.n_ctx}")

    def embed(self, input_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """Word embeddings (the input of every gradient method)."""
        return self.embeddings(input_ids)

    def forward(self, attention_mask: Int[Tensor, "batch pos"], score_pos: Int[Tensor, "batch"],
                input_ids: Int[Tensor, "batch pos"] | None = None,
                inputs_embeds: Float[Tensor, "batch pos d_model"] | None = None, all_logits: bool = False,
                **kwargs):
        """Run the model; return ``(logits at score_pos: (batch, n_outputs), raw HF output)``.

        A causal LM computes its vocabulary logits only at ``score_pos`` unless ``all_logits``
        (then ``out.logits`` holds every position).
        """
        if self.kind == "causal_lm" and self._keep and not all_logits:
            kwargs["logits_to_keep"] = score_pos[:, None]  # (batch, 1): one position per example
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        logits = out.logits
        if self.kind == "causal_lm":
            if "logits_to_keep" in kwargs:
                return logits[:, 0], out  # (batch, 1, vocab) -> (batch, vocab)
            rows = torch.arange(logits.shape[0], device=logits.device)
            logits = logits[rows, score_pos]  # (batch, pos, vocab) -> (batch, vocab)
        return logits, out

    def target_logits(self, hidden: Float[Tensor, "batch pos d_model"], targets: Int[Tensor, "batch"],
                      final: bool) -> Float[Tensor, "batch pos"]:
        """LogAt: every token state through the head, the logit of each example's target.

        With a plain linear unembedding only the target's row is used:
        ``h_i · W_U[target] (+ b[target])``, the same number as the full logits without the
        ``(pos, vocab)`` product.
        """
        if not self.row_head:
            per_token = self.head(hidden, final)  # (batch, pos, n_outputs)
            return per_token.gather(-1, targets[:, None, None].expand(-1, hidden.shape[1], 1))[..., 0]
        if not final:
            hidden = self._final_norm(hidden)
        rows = self._head.weight[targets]  # (batch, d_model)
        logits = torch.einsum("bpd,bd->bp", hidden, rows)  # (batch, pos)
        if self._head.bias is not None:
            logits = logits + self._head.bias[targets][:, None]
        return logits

    def require_final_norm(self) -> None:
        """Raise unless layer-wise scores can be computed (a causal LM whose final norm is known)."""
        if self.kind == "causal_lm":
            self._final_norm(None)

    def _final_norm(self, hidden):
        if self.final_norm is None:
            raise ValueError(f"layer-wise scores need the final norm of {type(self.model).__name__}: "
                             f"{self._no_final_norm}; set attribute.layerwise=false")
        return None if hidden is None else self.final_norm(hidden)

    def head(self, hidden: Float[Tensor, "batch pos d_model"], final: bool) -> Float[Tensor, "batch pos n_out"]:
        """The model's own head applied to every token state.

        ``final`` says the states already went through the model's final norm (HF's last
        ``hidden_states`` entry does for GPT-2, Llama, NeoX); otherwise it is applied first.
        """
        b, p, d = hidden.shape
        if self.kind == "causal_lm":
            return self._head(hidden if final else self._final_norm(hidden))
        return self._head(hidden.reshape(b * p, d)).reshape(b, p, -1)  # (b*p, d) -> (b*p, C) -> (b, p, C)


def relative_to_foil(logits: Float[Tensor, "batch n_out"], foils: Int[Tensor, "batch"]) -> Float[Tensor, "batch n_out"]:
    """Each row's logits minus its foil's logit (rows whose foil is -1 unchanged).

    The target's entry becomes the contrastive target ``logit(answer) − logit(foil)`` (Yin &
    Neubig 2022), so every method that reads ``logits[target]`` attributes the difference; the
    softmax is unchanged (a shift of all logits).

    >>> relative_to_foil(torch.tensor([[1.0, 3.0], [1.0, 3.0]]), torch.tensor([1, -1]))
    tensor([[-2.,  0.],
            [ 1.,  3.]])
    """
    foil = logits.gather(1, foils.clamp_min(0)[:, None])  # (batch, 1)
    return logits - torch.where(foils[:, None] >= 0, foil, torch.zeros_like(foil))


@contextlib.contextmanager
def input_gradients_only(model: torch.nn.Module) -> Iterator[None]:
    """Freeze the parameters while gradients w.r.t. the inputs are taken.

    Autograd then records no weight-gradient edges and keeps no activations that only weight
    gradients would need; the parameters' ``requires_grad`` flags are restored afterwards.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch to the eager attention kernel (the only one that returns attention patterns)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
