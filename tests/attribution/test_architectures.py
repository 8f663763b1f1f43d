"""The attribution study on every architecture family (tiny random models, tests/architectures.py)."""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import AttributeSettings, ScoredModel, attribute, encode_rows, run_attribute
from interpipe.attribution.methods import ig_baseline, resolve_targets
from interpipe.models import load_model
from interpipe.models.arch import describe_architecture
from tests.architectures import CAUSAL_FAMILIES
from tests.attribution.conftest import rows_for


def _case(folder):
    loaded = load_model(folder)
    return ScoredModel(loaded.model, "causal_lm"), encode_rows(loaded.tokenizer, rows_for(), "causal_lm", 64), loaded


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_ig_completeness_on_every_family(arch_folders, family):
    """Σ_i IG_i = f(x) − f(baseline) (Sundararajan et al. 2017), whatever the block and norm style.

    Rotary models integrate from the pad embedding: with no position embedding, a zero input is a
    singular point of the first norm (norm(αx) is scale-invariant, its derivative in α peaks at
    |x|/sqrt(eps) within |α| < sqrt(eps)/rms(x)), which no quadrature of a few hundred points resolves
    (the tiny Llama's gap grows from 0.4 to 1.8 logits between 64 and 1024 steps).
    """
    sm, batch, loaded = _case(arch_folders[family])
    baseline = "zero" if describe_architecture(loaded.model).positions == "learned" else "pad"
    settings = AttributeSettings(ig_steps=256, ig_baseline=baseline)  # 256 steps: converged on every family
    result = attribute(sm, batch, "integrated_gradients", settings, loaded.tokenizer)
    targets = resolve_targets(sm, batch)
    with torch.no_grad():
        full, _ = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids)
        base, _ = sm.forward(batch.attention_mask, batch.score_pos,
                             inputs_embeds=ig_baseline(sm, batch, baseline, loaded.tokenizer))
    expected = (full - base).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.scores.sum(1), expected, rtol=5e-3, atol=5e-3 * float(expected.abs().max()))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_logat_at_the_scored_position_is_the_model_logit(arch_folders, family):
    """LogAt through the final norm and unembedding, from every layer's states, reproduces the
    model's own target logit at the scored position for the last layer (the final norm is found
    from the architecture description, not by name)."""
    sm, batch, loaded = _case(arch_folders[family])
    result = attribute(sm, batch, "logat", AttributeSettings(layerwise=True))
    targets = resolve_targets(sm, batch)
    with torch.no_grad():
        logits, _ = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids)
    rows = torch.arange(len(batch))
    torch.testing.assert_close(result.scores[rows, batch.score_pos], logits[rows, targets], rtol=1e-4, atol=1e-4)
    layered = attribute(sm, batch, "normxlogit", AttributeSettings(layerwise=True))
    assert layered.layer_scores.shape[0] == loaded.model.config.num_hidden_layers + 1
    torch.testing.assert_close(layered.layer_scores[-1], layered.scores)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_study_runs_end_to_end(arch_folders, data_root, tmp_path, family):
    settings = AttributeSettings(n_examples=4, ig_steps=4, ratios=[0.5], n_heatmaps=1, layerwise_max_layers=2,
                                 causal_target="answer", top_k=2, floor_draws=1)
    metrics = run_attribute(settings, arch_folders[family], data_root, tmp_path)
    assert metrics["n_examples"] == 4
    for method in settings.methods:  # the plain target: a drop in probability, within [-1, 1] for every method
        assert -1.0 <= metrics[f"{method}/comprehensiveness"] <= 1.0, method
        assert -1.0 <= metrics[f"{method}/comprehensiveness_k"] <= 1.0, method
    assert (tmp_path / "normxlogit" / "layerwise.csv").read_text().count("\n") == 1 + 2  # header + 2 layers
