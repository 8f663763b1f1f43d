"""Our gradient methods give Captum's numbers on the same model, inputs, targets and baseline.

Reduction over d_model, as in the NormXLogit paper: saliency = L2 norm of Captum ``Saliency``
(which returns |grad|, so the norm is the same), gradient×input and integrated gradients =
sum of Captum's per-dimension attributions. Tolerance: float32 on CPU, the same operations in
a different order, so ``rtol=1e-4`` with ``atol=1e-5`` times the largest |score|.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, LayerIntegratedGradients, Saliency

from interpipe.attribution import AttributeSettings, attribute
from interpipe.attribution.methods import ig_baseline, resolve_targets


def close(ours, theirs, mask):
    ours, theirs = ours[mask.bool()], theirs[mask.bool()].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def forward_func(sm, batch):
    """Captum's view of the model: embeddings -> logits at each example's scored position."""
    rows = torch.arange(len(batch))

    def f(embeds):
        n = embeds.shape[0]  # Captum expands the batch (steps x examples) for IG
        idx = rows.repeat(n // len(batch))
        logits, _ = sm.forward(batch.attention_mask[idx], batch.score_pos[idx], inputs_embeds=embeds)
        return logits

    return f


@pytest.mark.parametrize("method", ["saliency", "grad_x_input"])
def test_gradient_methods_match_captum(case, method):
    sm, batch, tokenizer = case
    ours = attribute(sm, batch, method, AttributeSettings())
    targets = resolve_targets(sm, batch)
    embeds = sm.embed(batch.input_ids).detach()
    if method == "saliency":
        theirs = Saliency(forward_func(sm, batch)).attribute(embeds, target=targets).norm(dim=-1)
    else:
        theirs = InputXGradient(forward_func(sm, batch)).attribute(embeds, target=targets).sum(-1)
    close(ours.scores, theirs.detach(), batch.attention_mask)


@pytest.mark.parametrize("ig_method", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_match_captum(case, ig_method):
    sm, batch, tokenizer = case
    s = AttributeSettings(ig_steps=12, ig_method=ig_method, ig_internal_batch_size=7)
    ours = attribute(sm, batch, "integrated_gradients", s, tokenizer)
    targets = resolve_targets(sm, batch)
    embeds = sm.embed(batch.input_ids).detach()
    base = ig_baseline(sm, batch, "zero")
    theirs = IntegratedGradients(forward_func(sm, batch)).attribute(
        embeds, baselines=base, target=targets, n_steps=12, method=ig_method, internal_batch_size=len(batch) * 3)
    close(ours.scores, theirs.sum(-1).detach(), batch.attention_mask)


def test_integrated_gradients_pad_baseline_match_layer_ig(bert_case):
    """Captum's LayerIntegratedGradients on the word embeddings with pad-token baseline ids."""
    sm, batch, tokenizer = bert_case
    s = AttributeSettings(ig_steps=10, ig_baseline="pad")
    ours = attribute(sm, batch, "integrated_gradients", s, tokenizer)
    targets = resolve_targets(sm, batch)
    base_ids = torch.where(batch.eligible, tokenizer.pad_token_id, batch.input_ids)

    def f(ids, mask):
        return sm.model(input_ids=ids, attention_mask=mask).logits

    lig = LayerIntegratedGradients(f, sm.model.get_input_embeddings())
    theirs = lig.attribute(batch.input_ids, baselines=base_ids, target=targets, n_steps=10,
                           additional_forward_args=(batch.attention_mask,))
    close(ours.scores, theirs.sum(-1).detach(), batch.attention_mask)


def test_every_position_matches_captum_llm_attribution(gpt2_case):
    """Our batched all-targets gradient×input equals Captum's per-target LLMGradientAttribution."""
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    from interpipe.attribution import attribute_positions

    sm, batch, tokenizer = gpt2_case
    n = int(batch.attention_mask[2].sum())
    ids = batch.input_ids[2, :n]
    n_prompt = 6
    prompt = tokenizer.decode(ids[1:n_prompt])  # the tokenizer adds BOS back
    inp = TextTokenInput(prompt, tokenizer)
    assert inp.to_tensor().shape[1] == n_prompt
    llm = LLMGradientAttribution(LayerGradientXActivation(sm.model, sm.model.get_input_embeddings()), tokenizer)
    theirs = llm.attribute(inp, target=ids[n_prompt:]).token_attr  # (n_targets, n_prompt)
    ours = attribute_positions(sm, ids, "grad_x_input")  # (n - 1, n)
    # target c (token n_prompt + c) is predicted at position n_prompt - 1 + c; Captum scores the prompt only
    torch.testing.assert_close(ours[n_prompt - 1:, :n_prompt], theirs.float(), rtol=1e-4,
                               atol=1e-5 * float(theirs.abs().max()))
