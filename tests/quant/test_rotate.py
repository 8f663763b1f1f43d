"""QuaRot's Hadamard rotation: the matrices, a hand-computed outlier spread, exactness on Llama/Qwen2, refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from interpipe.models.arch import UnsupportedArchitecture, describe_architecture
from interpipe.quant import QuantSettings, run_quantize
from interpipe.quant.rotate import check_rotatable, hadamard, random_hadamard, rotate
from tests.architectures import CAUSAL_FAMILIES

ROTATABLE = ("llama", "qwen2")


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 64, 576, 1536])  # 576 = 36 x 16, 1536 = 12 x 128 (SmolLM2)
def test_hadamard_rows_are_orthogonal(n):
    h = hadamard(n)
    assert bool((h.abs() == 1).all())
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=h.dtype))  # H H^T = n I, exactly (integers)
    q = random_hadamard(n, seed=3)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=q.dtype), atol=1e-12)


def test_no_hadamard_of_order_six():
    with pytest.raises(ValueError, match="order 6"):
        hadamard(6)  # none exists: orders are 1, 2 or multiples of 4


def test_rotation_spreads_a_planted_outlier_by_hand():
    # H_2 / sqrt(2) = [[1, 1], [1, -1]] / sqrt(2): (4, 0) -> (4, 4) / sqrt(2); the norm stays 4
    h = hadamard(2) / math.sqrt(2)
    r = 1 / math.sqrt(2)
    assert torch.allclose(h, torch.tensor([[r, r], [r, -r]], dtype=torch.float64))
    x = torch.tensor([[4.0, 0.0]], dtype=torch.float64) @ h
    assert x[0].tolist() == pytest.approx([4 * r, 4 * r])
    # in 8 dims one channel of 8 becomes eight channels of +-8 / sqrt(8): absmax 8 -> 2.83
    spread = torch.eye(8, dtype=torch.float64)[:1] * 8 @ (hadamard(8) / math.sqrt(8))
    assert spread.abs().tolist()[0] == pytest.approx([8 / math.sqrt(8)] * 8)


def _plant_norms(model) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for path in describe_architecture(model).norms():
            norm = model.get_submodule(path)
            norm.weight.add_(0.5 * torch.randn_like(norm.weight))
            norm.weight[3] = 12.0


@pytest.mark.parametrize("family", ROTATABLE)
def test_rotated_model_equals_the_original(arch_folders, family, batches):
    from interpipe.models import load_model

    model = load_model(arch_folders[family]).model.eval()
    _plant_norms(model)
    rotated = copy.deepcopy(model)
    rotation = rotate(rotated, describe_architecture(rotated), seed=0)
    assert set(rotation.online) == {b.mlp_out for b in describe_architecture(model).blocks}
    with torch.no_grad():
        for b in batches:
            ref = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.mask]  # (n, vocab)
            out = rotated(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.mask]
            assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    spec = describe_architecture(rotated)
    emb, head = rotated.get_submodule(spec.embed).weight, rotated.get_submodule(spec.unembed).weight
    assert emb.data_ptr() != head.data_ptr()  # the unembedding was untied before its rotation
    assert all(bool((rotated.get_submodule(p).weight == 1).all()) for p in spec.norms())  # gains folded
    rotation.remove()
    with torch.no_grad():  # without the online Hadamard the function changes: the hook is needed
        out = rotated(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask).logits
        ref = model(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask).logits
    assert float((out - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("family", [f for f in CAUSAL_FAMILIES if f not in ROTATABLE])
def test_other_families_are_refused_naming_what_they_lack(arch_folders, family, data_root, tmp_path, monkeypatch):
    from interpipe.models import load_model

    spec = describe_architecture(load_model(arch_folders[family]).model)
    with pytest.raises(UnsupportedArchitecture, match=f"model_type='{family}'.*lacks"):
        check_rotatable(spec)
    monkeypatch.setattr("interpipe.quant.study.calibrate", lambda *a, **k: pytest.fail("calibrated first"))
    with pytest.raises(UnsupportedArchitecture, match="lacks .*RMSNorm"):
        run_quantize(QuantSettings(methods=["quarot"], bits=["w8a8"]), arch_folders[family], data_root, tmp_path / "o")


def test_quarot_in_the_study(arch_folders, data_root, tmp_path):
    s = QuantSettings(methods=["rtn", "quarot", "quarot_gptq"], bits=["w4a8"], calib_samples=4, eval_samples=4,
                      probe_samples=4, max_length=24, save_migrated=False, calib_seeds=[0, 1], spread_bits=[],
                      gptq_block_size=16)
    study = run_quantize(s, arch_folders["llama"], data_root, tmp_path / "out")
    rtn, quarot, quarot_gptq = study.settings
    for r in (quarot, quarot_gptq):
        assert r.metrics["equiv_rel_diff"] < 1e-5  # the rotated FP model, first seed
        assert r.metrics["n_seeds"] == 2 and "loss_delta_minus_rtn_ci_low" in r.metrics
        assert len(r.layers) == len(rtn.layers)
    # propagated errors are measured in the original basis: writers' outputs rotated back
    assert quarot.metrics["sqnr_mean_db"] > 0
