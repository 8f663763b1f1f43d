"""Migration: SmoothQuant scales against the published formula, exact equivalence for both block styles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpipe.quant.arch import describe_arch, linear_weight
from interpipe.quant.calibrate import calibrate
from interpipe.quant.fake import ActSpec, WeightSpec
from interpipe.quant.migrate import SearchGrid, migrate, smoothquant_scales

W8, A8 = WeightSpec(8), ActSpec(8)


def _ln_outputs(model, norm_path, batches) -> np.ndarray:
    """LayerNorm outputs at non-padding tokens, captured with a plain forward hook (float64 numpy)."""
    rows = []

    def hook(module, args, out):
        rows.append(out.detach()[current["mask"]].double().numpy())

    current = {}
    handle = model.get_submodule(norm_path).register_forward_hook(hook)
    with torch.no_grad():
        for b in batches:
            current["mask"] = b.mask
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    handle.remove()
    return np.concatenate(rows)


def _outputs(model, batches):
    with torch.no_grad():
        outs = [model(input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches]
    key = "logits" if hasattr(outs[0], "logits") else "last_hidden_state"
    return [getattr(o, key)[b.mask] for o, b in zip(outs, batches)]


def _rel_diff(ref, new) -> float:
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, new))
    return diff / max(float(a.abs().max()) for a in ref)


@pytest.mark.parametrize("alpha", [0.5, 0.8])
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_smoothquant_scales_match_published_formula(family, alpha, request, batches):
    model = request.getfixturevalue(f"tiny_{family}")
    arch = describe_arch(model)
    pair = arch.pairs[0]  # LN1 -> c_attn (GPT-2), embeddings.LayerNorm -> q, k, v (BERT)
    x = _ln_outputs(model, pair.norm, batches)
    weights = []
    for path in pair.linears:
        module = model.get_submodule(path)
        w = module.weight.detach().double().numpy()
        weights.append(w if type(module).__name__ != "Conv1D" else w.T)  # Conv1D stores [in, out]
    act_max = np.abs(x).max(axis=0)  # max_t |X_tj|
    w_max = np.abs(np.concatenate(weights, axis=0)).max(axis=0)  # max_i |W_ij| over q, k and v rows
    expected = act_max**alpha / w_max ** (1 - alpha)

    got = smoothquant_scales(torch.tensor(act_max), [linear_weight(model.get_submodule(p)).detach().double()
                                                     for p in pair.linears], alpha)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)

    gamma = model.get_submodule(pair.norm).weight.detach().double().clone()
    calib = calibrate(model, arch, batches, "cpu")
    migrate(model, arch, calib, "smoothquant", W8, A8, alpha=alpha)
    folded = gamma / model.get_submodule(pair.norm).weight.detach().double()  # gamma' = gamma / s
    np.testing.assert_allclose(folded.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["smoothquant", "osplus"])
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_migrated_fp_model_equals_original(family, method, request, batches):
    model = request.getfixturevalue(f"tiny_{family}")
    arch = describe_arch(model)
    assert arch.style == ("pre_ln" if family == "gpt2" else "post_ln")
    before = _outputs(model, batches)
    calib = calibrate(model, arch, batches, "cpu", keep_pair_inputs=True)
    done = migrate(model, arch, calib, method, WeightSpec(6), ActSpec(6), grid=SearchGrid(8, 0.0)).pairs
    assert max(float(m.scale.max()) for m in done) > 1.5  # the planted outliers were really migrated
    assert _rel_diff(before, _outputs(model, batches)) < 1e-4


def test_osplus_centres_and_bounds_the_migrated_activations(tiny_gpt2, batches):
    arch = describe_arch(tiny_gpt2)
    calib = calibrate(tiny_gpt2, arch, batches, "cpu", keep_pair_inputs=True)
    done = migrate(tiny_gpt2, arch, calib, "osplus", WeightSpec(6), ActSpec(6), grid=SearchGrid(8, 0.0)).pairs
    for m in done:
        x = _ln_outputs(tiny_gpt2, m.pair.norm, batches)
        centre = (x.max(0) + x.min(0)) / 2
        assert np.abs(centre).max() < 1e-4 * np.abs(x).max() + 1e-5  # shifted: every channel centred
        assert np.abs(x).max() <= m.threshold * (1 + 1e-4)  # scaled: within the searched threshold
        assert m.loss_after <= m.loss_before


def test_post_ln_needs_the_shortcut_wrapper(tiny_bert, batches, tmp_path):
    from transformers import BertModel

    from interpipe.models import ModelCard
    from interpipe.models.toy import build_tokenizer
    from interpipe.quant.export import load_migrated, save_migrated

    arch = describe_arch(tiny_bert)
    before = _outputs(tiny_bert, batches)
    migration = migrate(tiny_bert, arch, calibrate(tiny_bert, arch, batches, "cpu"), "smoothquant", W8, A8)
    save_migrated(tmp_path / "m", tiny_bert, migration, build_tokenizer(["a b"]), ModelCard("tiny", "test", "encoder"),
                  arch.style, "smoothquant")
    assert _rel_diff(before, _outputs(load_migrated(tmp_path / "m").model, batches)) < 1e-4
    vanilla = BertModel.from_pretrained(tmp_path / "m").eval()  # no shortcut restore: not equivalent
    assert _rel_diff(before, _outputs(vanilla, batches)) > 1e-2


def test_pre_ln_migrated_folder_loads_with_plain_from_pretrained(tiny_gpt2, batches, tmp_path):
    from transformers import AutoModelForCausalLM

    from interpipe.models import ModelCard
    from interpipe.models.toy import build_tokenizer
    from interpipe.quant.export import save_migrated

    arch = describe_arch(tiny_gpt2)
    before = _outputs(tiny_gpt2, batches)
    migration = migrate(tiny_gpt2, arch, calibrate(tiny_gpt2, arch, batches, "cpu", keep_pair_inputs=True), "osplus",
                        W8, A8, grid=SearchGrid(4, 0.0))
    save_migrated(tmp_path / "m", tiny_gpt2, migration, build_tokenizer(["a b"]), ModelCard("tiny", "test", "causal_lm"),
                  arch.style, "osplus")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert _rel_diff(before, _outputs(plain, batches)) < 1e-4


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_osplus_ablations_shift_only_and_scale_only(family, request, batches):
    model = request.getfixturevalue(f"tiny_{family}")
    arch = describe_arch(model)
    before = _outputs(model, batches)
    calib = calibrate(model, arch, batches, "cpu", keep_pair_inputs=True)
    shift_only = migrate(model, arch, calib, "osplus_shift", WeightSpec(6), ActSpec(6))
    for m in shift_only.pairs:
        st = calib.stats[m.pair.hook]
        assert torch.equal(m.scale, torch.ones_like(m.scale))
        assert torch.allclose(m.shift, ((st.max + st.min) / 2).float())
    assert _rel_diff(before, _outputs(model, batches)) < 1e-4
    scale_only = migrate(model, arch, calibrate(model, arch, batches, "cpu", keep_pair_inputs=True), "osplus_scale",
                         WeightSpec(6), ActSpec(6), grid=SearchGrid(8, 0.0))
    assert all(float(m.shift.abs().max()) == 0.0 for m in scale_only.pairs)
    assert max(float(m.scale.max()) for m in scale_only.pairs) > 1.5  # the planted channel is scaled down
    assert _rel_diff(before, _outputs(model, batches)) < 1e-4  # both folds together still exact


def test_official_search_grid():
    """OS+'s ``num = max(100, max|x~| / 0.5)`` thresholds from max|x~| down to t = 1."""
    official = SearchGrid(steps=100, step=0.5, t_min=1.0)
    wide, narrow = official.thresholds(201.0), official.thresholds(30.0)
    assert len(wide) == 400 and len(narrow) == 100
    assert wide[0] == 201.0 and wide[-1] == pytest.approx(1.0) and narrow[-1] == pytest.approx(1.0)
    assert official.thresholds(0.5) == [0.5]  # already inside the threshold: nothing to search
