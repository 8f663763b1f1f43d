"""The weights config group, and every study end to end on the tiny toy model."""

from __future__ import annotations

import pytest

from tests.conftest import compose


def test_config_composes_and_validates():
    from stages import schema

    settings = schema.validate(compose(["weights.study=bigram", "weights.bigram.l0_lambda=10"]))
    assert settings.weights.study == "bigram" and settings.weights.bigram.l0_lambda == 10


def test_config_rejects_unknown_key_and_bad_values():
    from stages import schema

    with pytest.raises(Exception, match="nope"):
        compose(["weights.bigram.nope=1"])
    with pytest.raises(ValueError, match="weights.study"):
        schema.validate(compose(["weights.study=attention"]))
    with pytest.raises(ValueError, match="weights.talking_heads.receiver"):
        schema.validate(compose(["weights.talking_heads.receiver=head3"]))
    with pytest.raises(ValueError, match="L<layer>H<head>"):  # the old layer.head form: Hydra reads 1.10 as 1.1
        schema.validate(compose(["weights.talking_heads.receiver=1.10"]))
    assert schema.validate(compose(["weights.talking_heads.receiver=L1H10"])).weights.talking_heads.receiver == "L1H10"


@pytest.mark.parametrize("preset", ["weights_gpt2", "weights_pythia"])
def test_paper_presets_compose(preset):
    from stages import schema

    settings = schema.validate(compose([f"experiment={preset}"]))
    assert settings.weights.bigram.steps == 15000 and settings.weights.lnfree.start_step == 20


@pytest.mark.slow
@pytest.mark.parametrize("study", ["talking_heads", "bigram", "lnfree"])
def test_study_writes_outputs(study, tiny_toy_folder, data_root, tmp_path):
    import pandas as pd

    from interpipe.weights import BigramSettings, LNFreeSettings, TalkingHeadsSettings, WeightsSettings, run_weights

    settings = WeightsSettings(
        study=study, batch_size=16,
        talking_heads=TalkingHeadsSettings(n_components=2, inhibition_components=1, n_inhibition_prompts=4,
                                           edit_candidates=1, edit_scales=[0.0, 1.0, 2.0], select_lengths=[5, 6],
                                           n_select=8, test_lengths=[2, 6], n_test_per_length=4),
        bigram=BigramSettings(steps=6, batch_size=4, max_eval_texts=16),
        lnfree=LNFreeSettings(start_step=1, gap_mlp=1, gap_qk=1, gap_v=1, gap_special=1, extra_steps=2, batch_size=4,
                              max_eval_texts=16, patching_prompts=4))
    metrics = run_weights(settings, tiny_toy_folder, data_root, tmp_path, checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "result.json").exists() and list(tmp_path.glob("*.png"))
    if study == "talking_heads":
        assert (tmp_path / "model_edited" / "card.json").exists() and metrics["edit_max_logit_gap"] < 1e-3
    elif study == "bigram":
        assert (tmp_path / "masks.safetensors").exists() and metrics["steps_run"] <= 6
        curve = pd.read_csv(tmp_path / "training_curve.csv")
        assert metrics["undecided_at_stop"] == pytest.approx(curve["undecided"].iloc[-1])
        assert "surprisal_corr_random_subnetwork_ci_low" in metrics
    else:
        assert (tmp_path / "model_lnfree" / "card.json").exists() and metrics["dla_vs_direct_max_abs_lnfree"] < 1e-3
        from transformers import AutoModelForCausalLM

        from interpipe.data import load_task
        from interpipe.models import load_model
        from interpipe.weights.lnfree.evaluate import text_losses

        stock = AutoModelForCausalLM.from_pretrained(tmp_path / "model_lnfree").eval()
        valid = list(load_task(data_root, "corpus", "validation")["text"])[:16]
        nll, count = text_losses(stock, load_model(tiny_toy_folder).tokenizer, valid, 8)
        assert nll.sum() / count.sum() == pytest.approx(metrics["ce_lnfree"], rel=1e-5)  # the stock folder is what was scored
        assert metrics["ce_delta_vs_control_ci_low"] <= metrics["ce_delta_vs_control"] <= metrics["ce_delta_vs_control_ci_high"]
        assert -1 <= metrics["dla_agreement_lnfree"] <= 1 and "dla_agreement_control" in metrics
        assert metrics["recovered"] in (0, 1) and "attribution_patching_r_z_lnfree" in metrics
        assert (tmp_path / "position_scales.csv").exists() and (tmp_path / "schedule.csv").exists()
        assert "frozen_no_finetune" in metrics["verdict"] or "frozen without fine-tuning" in metrics["verdict"]
    headline = pd.read_csv(tmp_path / "headline.csv")
    assert {"metric", "value", "ci_low", "ci_high", "baseline", "baseline_value"} <= set(headline.columns) and len(headline)
