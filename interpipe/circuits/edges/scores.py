"""Edge attribution patching: a first-order score for every edge at once (EAP, EAP-IG).

EAP (Syed et al. 2023) scores edge ``u → v`` by the change of the metric that patching it would
cause, to first order around the clean run::

    score(u → v) = Σ_{prompt, pos} (a_u(corrupted) − a_u(clean)) · ∂metric/∂x_v

with ``a_u`` the sender's output and ``x_v`` the receiver's input; the gradient is taken at the
receiver's input, so one backward pass gives every edge into ``v``. EAP-IG (Hanna et al. 2024,
"Have Faith in Faithfulness"; MIB's recommended method) averages that gradient over ``steps`` runs
interpolated between the corrupted and the clean run:

* ``eap-ig-inputs``: the input embeddings are interpolated, ``e_α = e(corrupted) + α (e(clean) −
  e(corrupted))``, ``α = k / steps`` for ``k = 0 … steps − 1`` (as the reference implementation,
  hannamw/EAP-IG);
* ``eap-ig-activations``: every receiver's input is interpolated between its clean and corrupted
  values, ``x_v(α)``, at the same ``α``; the gradient still flows through the model (the values
  are set, the derivatives are the model's at those values).

Scores are in units of the metric (the normalised logit difference: 1 = the clean − corrupted
gap); circuits keep the edges of largest ``|score|``. Sums run over the positions after the
prompts' shared prefix (the sender differences are zero before it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.edges.graph import EdgeGraph
from interpipe.circuits.edges.hooks import INPUT_HOOK, Fired, edge_hooks, receiver_groups
from interpipe.circuits.edges.patching import sender_outputs
from interpipe.circuits.engine import run_to_final
from interpipe.typing import Float, Tensor

from interpipe.settings.circuits import EDGE_METHODS as METHODS  # noqa: E402 - the allowed values live with the settings


def edge_scores(bridge: Any, graph: EdgeGraph, batch: PromptBatch, metric: Callable[[Tensor], Tensor],
                method: str = "eap-ig-inputs", steps: int = 5, progress: bool = False,
                outputs: tuple[Tensor, Tensor] | None = None) -> Float[Tensor, "receiver sender"]:
    """The score of every edge (0 where no edge exists), ``[receiver, sender]``.

    Args:
        metric: maps answer-position logits ``[1, batch, d_vocab]`` to ``[1]`` (a batch mean).
        method: one of :data:`METHODS`.
        steps: interpolation steps of the EAP-IG methods (EAP: one gradient, at the clean run).
        outputs: the senders' outputs ``(clean, corrupted)`` ``[batch, pos, sender, d_model]`` when
            already computed.
    """
    if method not in METHODS:
        raise ValueError(f"edge scoring method {method!r} is not one of {METHODS}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    clean, corrupted = outputs or (sender_outputs(bridge, graph, batch.clean_tokens, batch.answer_pos)[0],
                                   sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)[0])
    prefix = min(batch.shared_prefix(), int(batch.answer_pos.min()))
    alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]  # EAP: the clean run itself
    interpolate = _activations(bridge, graph, batch) if method == "eap-ig-activations" else _inputs(clean, corrupted)
    grads: dict[str, Tensor] = {}
    for alpha in tqdm(alphas, desc=f"{method} steps", disable=not progress, leave=False):
        for name, g in _gradients(bridge, graph, batch, metric, interpolate(alpha)).items():
            g = g[:, prefix:]  # (batch, pos after prefix, [receiver,] d)
            grads[name] = grads[name] + g if name in grads else g
    delta = (corrupted - clean)[:, prefix:].float()  # (batch, pos after prefix, sender, d)
    columns = torch.zeros(*delta.shape[:2], graph.n_receivers, delta.shape[-1])  # (batch, pos, receiver, d)
    for name, _, _, rows in receiver_groups(graph):
        g = grads[name].float() / len(alphas)
        columns[:, :, rows] = (g if g.ndim == 4 else g[:, :, None]).to(columns.device)
    sender_rows = delta.permute(2, 0, 1, 3).reshape(graph.n_senders, -1)  # (sender, batch*pos*d)
    receiver_cols = columns.permute(0, 1, 3, 2).reshape(-1, graph.n_receivers)  # (batch*pos*d, receiver)
    scores = (sender_rows.cpu() @ receiver_cols).T  # (receiver, sender): Σ over prompts, positions and d_model
    return scores * graph.allowed


def _inputs(clean: Tensor, corrupted: Tensor) -> Callable[[float], list]:
    """Hooks interpolating the input embeddings at ``α``."""

    def hooks(alpha: float) -> list:
        value = corrupted[:, :, 0] + alpha * (clean[:, :, 0] - corrupted[:, :, 0])  # (batch, pos, d_model)
        return [(INPUT_HOOK, lambda act, hook: value.to(act.dtype).clone().requires_grad_(True))]

    return hooks


def _activations(bridge: Any, graph: EdgeGraph, batch: PromptBatch) -> Callable[[float], list]:
    """Hooks setting every receiver's input to its interpolation at ``α`` (derivatives pass through)."""
    ends = [_receiver_inputs(bridge, graph, t, batch.answer_pos) for t in (batch.clean_tokens, batch.corrupted_tokens)]

    def hooks(alpha: float) -> list:
        def at(name: str) -> Callable:
            clean, corrupted = ends[0][name], ends[1][name]
            value = corrupted + alpha * (clean - corrupted)  # (batch, pos, [receiver,] d)
            return lambda act, hook: act + (value.to(act.dtype) - act).detach()
        return [(name, at(name)) for name, *_ in receiver_groups(graph)]

    return hooks


def _receiver_inputs(bridge: Any, graph: EdgeGraph, tokens: Tensor, answer_pos: Tensor) -> dict[str, Tensor]:
    kept: dict[str, Tensor] = {}
    fired = Fired()

    def keep(name: str) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            kept[name] = act.detach().clone()
            return act
        return hook

    hooks = [fired.wrap(n, keep(n)) for n, *_ in receiver_groups(graph)]
    with edge_hooks(bridge), torch.inference_mode():
        run_to_final(bridge, tokens, hooks, answer_pos)
    fired.check()
    return kept


def _gradients(bridge: Any, graph: EdgeGraph, batch: PromptBatch, metric: Callable[[Tensor], Tensor],
               extra: list) -> dict[str, Tensor]:
    """∂metric/∂(input) at every receiver hook of one run of the clean prompts under ``extra`` hooks."""
    kept: dict[str, Tensor] = {}
    fired = Fired()
    interpolated = dict(extra)

    def keep(name: str) -> Callable:
        before = interpolated.pop(name, None)

        def hook(act: Tensor, hook: Any) -> Tensor:
            # a new tensor: the gradient then flows only through this receiver, not the residual stream the
            # hook may sit on (``hook_mlp_in`` is ln2's input, the same tensor the residual add reads)
            act = before(act, hook) if before else act.clone()
            kept[name] = act
            return act
        return hook

    hooks = [fired.wrap(n, keep(n)) for n, *_ in receiver_groups(graph)]
    interpolated.setdefault(INPUT_HOOK, lambda act, hook: act.detach().requires_grad_(True))  # gradients start here
    hooks += [fired.wrap(n, f) for n, f in interpolated.items()]
    with edge_hooks(bridge), torch.enable_grad():
        logits = run_to_final(bridge, batch.clean_tokens, hooks, batch.answer_pos)  # (batch, d_vocab)
        value = metric(logits[None])[0]
        names = list(kept)
        grads = torch.autograd.grad(value, [kept[n] for n in names], allow_unused=True)
    fired.check()
    return {n: torch.zeros_like(kept[n]) if g is None else g.detach() for n, g in zip(names, grads)}
