"""GPTQ, LLM.int8() and the activation-granularity setting inside the study, on every family."""

from __future__ import annotations

import pandas as pd
import pytest

from interpipe.quant import QuantSettings, run_quantize
from tests.architectures import FAMILIES
from tests.quant.test_study import toy_folder  # noqa: F401 (fixture)

TINY = dict(calib_samples=4, eval_samples=4, probe_samples=4, max_length=24, save_migrated=False, calib_seeds=[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_and_llm_int8_run_on_every_family(arch_folders, family, data_root, tmp_path):
    s = QuantSettings(methods=["gptq", "llmint8"], bits=["w8a8"], int8_threshold=1.0, gptq_block_size=16, **TINY)
    study = run_quantize(s, arch_folders[family], data_root, tmp_path / "out")
    gptq, int8 = study.settings
    assert gptq.name.endswith("-gptq-w8a8-paper") and int8.name.endswith("-llmint8-w8a8-vectorwise-t1")
    assert gptq.metrics["sqnr_mean_db"] == gptq.metrics["sqnr_mean_db"]  # not NaN
    shares = int8.layers["decomposed_share"]
    assert len(shares) == len(int8.layers) and bool(((shares >= 0) & (shares <= 1)).all())
    assert 0 < int8.metrics["decomposed_share_mean"] <= int8.metrics["decomposed_share_max"] <= 1  # threshold 1: some
    assert "llmint8" in study.info["protocol"]["methods"]


def test_gptq_beats_rtn_weight_only_and_exports(toy_folder, data_root, tmp_path):  # noqa: F811
    from interpipe.models import load_model

    s = QuantSettings(methods=["rtn", "gptq"], bits=["w4a16"], gptq_block_size=8, export=["gptq-w4a16"],
                      **{**TINY, "calib_samples": 16})
    study = run_quantize(s, toy_folder, data_root, tmp_path / "out", export_root=tmp_path / "models")
    rtn, gptq = (r.layers.set_index("module")["local_sqnr_db"] for r in study.settings)
    assert float((gptq - rtn).mean()) > 0  # the weight error on held-out inputs, layer by layer
    assert "loss_delta_minus_rtn" in study.settings[1].metrics
    loaded = load_model(tmp_path / "models" / "tiny-gptq-w4a16")
    assert loaded.card.extra["quantization"]["method"] == "gptq"


def test_per_token_override_names_and_uses_no_static_range(toy_folder, data_root, tmp_path):  # noqa: F811
    s = QuantSettings(methods=["rtn"], bits=["w8a8"], act_granularity="per_token_dynamic", **TINY)
    study = run_quantize(s, toy_folder, data_root, tmp_path / "out")
    (r,) = study.settings
    assert r.name == "tiny-rtn-w8a8-paper-apertoken" and r.granularity == "paper-apertoken"
    assert r.layers["act_max"].isna().all()  # dynamic: no calibrated range
    assert "per_token_dynamic" in study.info["protocol"]["grids"]["w8a8"]
    head = pd.read_csv(tmp_path / "out" / "headline.csv")
    settings = head[(head.quant_method == "rtn") & (head.metric != "frontier_bits")]  # a frontier may be "none"
    assert len(settings) and (settings.bits == "w8a8").all()
