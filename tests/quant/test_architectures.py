"""The architecture matrix: migration is exact, migrated folders reload, the study runs, others refuse.

Every family of ``tests/architectures.py`` (GPT-2, GPT-NeoX parallel, Llama and Qwen2 RMSNorm + GQA +
SwiGLU, OPT, post-LN BERT) gets planted outlier channels in every norm, then SmoothQuant and OS+
migrations whose FP models must equal the originals, saved folders that reload equal, and the whole
study at tiny settings. Undescribed families (Gemma, Phi-3) fail before calibration naming their
``model_type``.
"""

from __future__ import annotations

import pytest
import torch

from interpipe.models.arch import describe_architecture
from interpipe.quant import QuantSettings, run_quantize
from interpipe.quant.arch import describe_arch
from interpipe.quant.calibrate import calibrate
from interpipe.quant.fake import ActSpec, WeightSpec
from interpipe.quant.layers import TokenMask
from interpipe.quant.migrate import SearchGrid, migrate
from tests.architectures import CAUSAL_FAMILIES, FAMILIES, UNSUPPORTED

W6, A6 = WeightSpec(6), ActSpec(6)


def _load(folder):
    from interpipe.models import load_model

    return load_model(folder).model.eval()


def plant_outliers(model) -> None:
    """One large channel and one off-centre channel in every norm (any norm kind)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for path in describe_architecture(model).norms():
            norm = model.get_submodule(path)
            norm.weight[3] = 12.0
            if getattr(norm, "bias", None) is not None:
                norm.bias[5] = 4.0
            else:
                norm.weight[5] = -6.0


def _outputs(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = [model(input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches]
    return [o.logits[b.mask] if o.logits.ndim == 3 else o.logits for o, b in zip(outs, batches)]  # (n, vocab) | (batch, labels)


def _max_diff(ref, new) -> tuple[float, float]:
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, new))
    return diff, diff / max(float(a.abs().max()) for a in ref)


def _migrated(arch_folders, family, method, batches):
    model = _load(arch_folders[family])
    plant_outliers(model)
    arch = describe_arch(model)
    before = _outputs(model, batches)
    done = migrate(model, arch, calibrate(model, arch, batches, "cpu", keep_pair_inputs=True), method, W6, A6, grid=SearchGrid(6, 0.0))
    return model, arch, before, done


@pytest.mark.parametrize("method", ["smoothquant", "osplus"])
@pytest.mark.parametrize("family", FAMILIES)
def test_migrated_fp_model_equals_original(arch_folders, family, method, batches):
    model, arch, before, done = _migrated(arch_folders, family, method, batches)
    assert {p.kind for p in arch.pairs} == {"qkv", "fc1"} and len(done.pairs) == 2 * arch.spec.n_layers
    assert max(float(m.scale.max()) for m in done.pairs) > 1.5  # the planted outliers were really migrated
    diff, rel = _max_diff(before, _outputs(model, batches))
    assert diff < 1e-4 and rel < 1e-5, (diff, rel)
    shifts = done.input_shifts
    if method == "osplus" and arch.spec.norm_kind == "rmsnorm":  # the shift lives in the linears' inputs
        assert len(shifts) == sum(len(p.linears) for p in arch.pairs)
        assert max(float(v.abs().max()) for v in shifts.values()) > 0.1
    else:
        assert not shifts  # SmoothQuant has no shift; LayerNorm biases absorb the OS+ shift


@pytest.mark.parametrize("family", FAMILIES)
def test_migrated_folder_reloads_equal(arch_folders, family, batches, tmp_path):
    from transformers import AutoModelForCausalLM

    from interpipe.models import ModelCard
    from interpipe.quant.export import load_migrated, save_migrated

    model, arch, before, migration = _migrated(arch_folders, family, "osplus", batches)
    tok = _tokenizer(arch_folders[family])
    kind = "causal_lm" if family in CAUSAL_FAMILIES else "sequence_classifier"
    save_migrated(tmp_path / "m", model, migration, tok, ModelCard("tiny", "test", kind), arch.style, "osplus")
    assert _max_diff(before, _outputs(load_migrated(tmp_path / "m").model, batches))[1] < 1e-5
    if family in CAUSAL_FAMILIES:  # pre-LN and parallel: a stock Hugging Face folder
        stock = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
        assert _max_diff(before, _outputs(stock, batches))[1] < 1e-5


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_input_shift_quantizes_the_centred_input():
    """A linear with input shift delta: range of ``x - delta``, output ``Q(W) Q(x - delta) + b + W delta``."""
    from interpipe.quant.fake import quantize_activation, quantize_weight
    from interpipe.quant.layers import QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4, bias=False)
    delta = torch.linspace(-3, 3, 8)  # (d_in,)
    x = torch.randn(2, 5, 8) + delta  # (batch, pos, d_in) off-centre by delta
    tokens = TokenMask()
    layer = QuantLinear(lin, "lin", "qkv", WeightSpec(4), ActSpec(4), tokens, input_shift=delta)
    fp = layer(x)
    assert torch.allclose(fp, lin(x))
    layer.set_range(torch.tensor(-2.5), torch.tensor(2.0))  # the calibrated range of x - delta
    layer.set_mode("quant")
    expected = (quantize_activation(x - delta, ActSpec(4), torch.tensor(-2.5), torch.tensor(2.0)) @ quantize_weight(lin.weight, WeightSpec(4)).t()
                + lin.weight @ delta)  # (batch, pos, d_out)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    layer16 = QuantLinear(lin, "lin", "qkv", WeightSpec(16), ActSpec(16, granularity="per_token_dynamic"), tokens,
                          input_shift=delta)
    layer16.set_mode("quant")
    assert torch.allclose(layer16(x), fp, atol=1e-3)  # the shift and its bias cancel


@pytest.mark.parametrize("family", FAMILIES)
def test_study_runs_on_every_family(arch_folders, family, data_root, tmp_path):
    s = QuantSettings(methods=["osplus"], bits=["w6a6"], calib_samples=4, eval_samples=4, probe_samples=4,
                      osplus_steps=3, osplus_samples=2, max_length=24, save_migrated=False, calib_seeds=[0])
    study = run_quantize(s, arch_folders[family], data_root, tmp_path / "out")
    assert [r.method for r in study.settings] == ["osplus"]  # RTN and SmoothQuant: tests/quant/test_study.py
    spec = study.info
    assert spec["model_type"] == family and spec["block_style"] in ("pre_ln", "parallel", "post_ln")
    for r in study.settings:
        assert len(r.layers) > 0 and r.metrics["sqnr_mean_db"] == r.metrics["sqnr_mean_db"]  # not NaN
        if r.method != "rtn":
            assert r.metrics["equiv_rel_diff"] < 1e-4
    assert (tmp_path / "out" / "summary.csv").exists()


@pytest.mark.parametrize("family", UNSUPPORTED)
def test_undescribed_family_fails_before_calibration(arch_folders, family, data_root, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("calibration ran although the architecture is not described")

    monkeypatch.setattr("interpipe.quant.study.calibrate", fail)
    with pytest.raises(ValueError, match=f"model_type='{family}'"):
        run_quantize(QuantSettings(), arch_folders[family], data_root, tmp_path / "out")


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_end_metrics_unembed_only_the_positions_they_read(arch_folders, family, data_root):
    """Hidden states of the base model through the head equal the full model's logits, and the
    logit difference is the answer logit minus the foil logit of the full forward."""
    from interpipe.models import load_model
    from interpipe.models.tokens import answer_token_id
    from interpipe.quant.metrics import EndMetrics

    loaded = load_model(arch_folders[family])
    model = loaded.model.eval()
    end = EndMetrics("causal_lm", loaded.tokenizer, data_root, 4, 32, 8, torch.device("cpu"))
    raw = end.measure(model)
    task, (batches, answers, foils) = next((t, v) for t, v in end.tasks.items() if v[2] is not None)
    b = batches[0]
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits  # (batch, pos, vocab)
    last = b.attention_mask.sum(1) - 1
    final = logits[torch.arange(len(last)), last]  # (batch, vocab)
    n = len(last)
    assert torch.equal(raw[f"pred/{task}"][:n], final.argmax(-1))
    ld = final[torch.arange(n), answers[:n]] - final[torch.arange(n), foils[:n]]
    assert torch.allclose(raw[f"ld/{task}"][:n], ld, atol=1e-4)
    assert int(foils[0]) == answer_token_id(loaded.tokenizer, end_rows_foil(data_root, task))


def end_rows_foil(data_root, task):
    from interpipe.data import load_task

    return load_task(data_root, task, "test")[0]["foil"]
