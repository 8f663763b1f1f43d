"""LayerNorm removal: frozen wrappers, the saved LN-free folder, and exact DLA."""

from __future__ import annotations

import copy

import pytest
import torch

from interpipe.weights.layernorm_removal import (FrozenStdLayerNorm, layernorm_schedule, unwrap_to_lnfree,
                                                 wrap_layernorms)
from interpipe.weights.lnfree_eval import dla_exactness
from interpipe.settings.weights import LNFreeSettings

PROMPTS = ["The bag has a cup , a key and a box . I took out the cup and the box and kept the"] * 2
ANSWERS = ["key", "box"]


def test_unfrozen_wrapper_is_layernorm():
    ln = torch.nn.LayerNorm(8)
    torch.nn.init.normal_(ln.weight), torch.nn.init.normal_(ln.bias)
    x = torch.randn(3, 5, 8) * 4
    torch.testing.assert_close(FrozenStdLayerNorm(ln, 0.9)(x), ln(x))


def test_schedule_order(tiny_loaded):
    names = layernorm_schedule(tiny_loaded.model)
    n = tiny_loaded.model.config.n_layer
    assert [x.rsplit(".", 1)[1] for x in names] == ["ln_2"] * n + ["ln_1"] * n + ["ln_f"]


@pytest.fixture(scope="module")
def lnfree_folder(tiny_loaded, tmp_path_factory):
    """The tiny toy with every LN frozen at its average std (no fine-tuning), saved and reloaded."""
    from interpipe.models import describe, load_model, save_model_folder
    from interpipe.weights.lnfree_eval import text_losses

    model = copy.deepcopy(tiny_loaded.model)
    wrapped = wrap_layernorms(model, layernorm_schedule(model), 0.9)
    for ln in wrapped.values():
        ln.track = True
    text_losses(model, tiny_loaded.tokenizer, PROMPTS)
    for ln in wrapped.values():
        ln.track = False
        ln.frozen.fill_(True)
    ids = tiny_loaded.tokenizer(PROMPTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        frozen_logits = model(input_ids=ids).logits
    unwrap_to_lnfree(model, wrapped, 1e12)
    folder = tmp_path_factory.mktemp("lnfree") / "toy-lnfree"
    save_model_folder(folder, model, tiny_loaded.tokenizer, describe(model, "toy-lnfree", "test", "causal_lm"))
    return folder, ids, frozen_logits, load_model(folder)


def test_saved_lnfree_model_matches_frozen_wrappers(lnfree_folder):
    _, ids, frozen_logits, loaded = lnfree_folder
    assert loaded.model.config.layer_norm_epsilon == 1e12
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, frozen_logits, rtol=1e-4, atol=1e-4)


def test_dla_sum_equals_logit_and_direct_effect_only_without_ln(tiny_loaded, tiny_toy_folder, lnfree_folder):
    """Tolerance: 1e-4 logit units (float32). Sum of DLA + LN bias term equals the logit for both
    models; per-component DLA equals the true direct effect only for the LN-free model."""
    folder, _, _, loaded = lnfree_folder
    free = dla_exactness(loaded.model, loaded.tokenizer, folder, PROMPTS, ANSWERS)
    orig = dla_exactness(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder, PROMPTS, ANSWERS)
    assert free["dla_sum_max_abs"] < 1e-4 and orig["dla_sum_max_abs"] < 1e-4
    assert free["dla_vs_direct_max_abs"] < 1e-4
    assert orig["dla_vs_direct_max_abs"] > 100 * free["dla_vs_direct_max_abs"]


def test_unfrozen_layernorm_refuses_to_unwrap(tiny_loaded):
    model = copy.deepcopy(tiny_loaded.model)
    wrapped = wrap_layernorms(model, layernorm_schedule(model), 0.9)
    with pytest.raises(ValueError, match="never frozen"):
        unwrap_to_lnfree(model, wrapped, 1e12)


@pytest.mark.parametrize("kwargs, key", [({"gap": 0}, "gap"), ({"ema": 1.0}, "ema"), ({"lr": 0}, "lr"),
                                         ({"max_tokens": 1}, "max_tokens")])
def test_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=f"weights.lnfree.{key}"):
        LNFreeSettings(**kwargs)


def test_max_scale_statistic_ignores_padding():
    from interpipe.weights.layernorm_removal import FrozenScaleNorm, set_token_mask

    wrapper = FrozenScaleNorm(torch.nn.LayerNorm(8), ema=0.0, stat="max")
    x = torch.randn(2, 5, 8)
    x[0, 0] *= 50  # a massive first position (real)
    x[1, 3:] *= 1000  # padding
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    wrapper.track = True
    set_token_mask({"n": wrapper}, mask)
    wrapper(x)
    xc = x - x.mean(-1, keepdim=True)
    std = (xc.pow(2).mean(-1) + 1e-5).sqrt()  # (batch, pos)
    assert float(wrapper.avg_std) == pytest.approx(float(std[mask].max()), rel=1e-5)
    with pytest.raises(ValueError, match="weights.lnfree.scale_stat"):
        LNFreeSettings(scale_stat="median")


def test_first_position_keeps_its_own_scale_until_merged():
    """With split_first, position 0's frozen scale is its own (padding ignored); first_mix = 1 merges
    it into the shared scale; a norm not yet merged refuses to be saved."""
    from interpipe.weights.layernorm_removal import FrozenScaleNorm, set_token_mask

    ln = torch.nn.LayerNorm(8)
    wrapper = FrozenScaleNorm(ln, ema=0.0, split_first=True)
    x = torch.randn(2, 5, 8)
    x[:, 0] *= 100  # a massive first position
    x[1, 4] *= 1000  # padding
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    wrapper.track = True
    set_token_mask({"n": wrapper}, mask)
    wrapper(x)
    xc = x - x.mean(-1, keepdim=True)
    std = (xc.pow(2).mean(-1) + 1e-5).sqrt()  # (batch, pos)
    assert float(wrapper.avg_first) == pytest.approx(float(std[:, 0].mean()), rel=1e-5)
    assert float(wrapper.avg_std) == pytest.approx(float(std[:, 1:][mask[:, 1:]].mean()), rel=1e-5)
    assert wrapper.first_ratio() > 50
    wrapper.track = False
    wrapper.frozen.fill_(True)
    out = wrapper(x)
    torch.testing.assert_close(out[:, 0], xc[:, 0] / wrapper.avg_first)
    torch.testing.assert_close(out[:, 1:], xc[:, 1:] / wrapper.avg_std)
    model = torch.nn.Sequential()
    model.add_module("norm", wrapper)
    with pytest.raises(ValueError, match="first-position scale"):
        unwrap_to_lnfree(model, {"norm": wrapper}, 1e12)
    wrapper.first_mix.fill_(1.0)
    torch.testing.assert_close(wrapper(x), xc / wrapper.avg_std)


def test_dla_agreement_known_answers():
    """Same attributions: r = 1; sign-flipped: r = -1; unrelated: near 0."""
    from interpipe.weights.lnfree_eval import dla_agreement

    a = torch.randn(40, 7)
    out = dla_agreement({"original": a, "same": a.clone(), "flipped": -a, "other": torch.randn(40, 7)})
    assert out["dla_agreement_same"] == pytest.approx(1.0) and out["dla_agreement_flipped"] == pytest.approx(-1.0)
    assert abs(out["dla_agreement_other"]) < 0.3
    assert out["dla_agreement_other_ci_low"] < out["dla_agreement_other"] < out["dla_agreement_other_ci_high"]
