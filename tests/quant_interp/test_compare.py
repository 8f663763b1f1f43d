"""Overlap, effect correlation, head classes and attribution drift on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from interpipe.components import Component
from interpipe.quant_interp import compare, drift
from interpipe.quant_interp.inputs import Pair
from tests.quant_interp.conftest import FP_COMPREHENSIVENESS, FP_SCORES, write_attributions


def _heads(*names: str) -> list[Component]:
    return [Component.parse(name) for name in names]


def test_overlap_known_answer():
    out = compare.overlap(_heads("L0H0", "L1H1", "L2H2", "L3H3"), _heads("L1H1", "L3H3", "L4H0"))
    assert out == {"circuit_jaccard": 2 / 5, "circuit_containment": 2 / 4, "circuit_shared_heads": 2.0}
    assert compare.overlap([], [])["circuit_jaccard"] == 0.0
    # chance: random sets of 1 and 2 of 3 heads share a head with probability 2/3, Jaccard then 1/2
    chance = compare.overlap_chance(_heads("L0H0"), _heads("L0H1", "L0H2"), 3)
    assert chance == pytest.approx({"circuit_jaccard_chance": 1 / 3, "circuit_containment_chance": 2 / 3})


def _effects(values):
    return pd.DataFrame([{"layer": l, "head": h, "effect": v} for (l, h), v in values.items()])


def test_effect_correlation_known_answers():
    heads = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    fp = _effects(dict(zip(heads, [0.0, 1.0, 2.0, 3.0, 4.0])))
    same = compare.effect_correlation(compare.paired_effects(fp, fp), 200)
    assert (same.estimate, same.low, same.high) == pytest.approx((1.0, 1.0, 1.0))
    flipped = compare.effect_correlation(compare.paired_effects(fp, _effects(dict(zip(heads, [4, 3, 2, 1, 0.0])))), 200)
    assert flipped.estimate == pytest.approx(-1.0)
    q = _effects(dict(zip(heads, [1.0, 0.0, 2.0, 4.0, 3.0])))  # by hand: r = 0.8
    assert compare.effect_correlation(compare.paired_effects(fp, q), 200).estimate == pytest.approx(0.8)
    with pytest.raises(ValueError, match="different heads"):
        compare.paired_effects(fp, q.iloc[:3])


def _classes(rows):
    base = {"attn_end_io": 0.0, "attn_end_s": 0.0, "attn_s2_s1": 0.0, "attn_s2_s1_next": 0.0, "direct_effect": 0.0}
    return pd.DataFrame([{**base, "component": c, "class": k, **extra} for c, k, extra in rows])


def test_head_class_table_and_survival():
    fp = _classes([("L0H0", "name mover", {"attn_end_io": 0.6, "direct_effect": 1.0}),
                   ("L0H1", "induction", {"attn_s2_s1_next": 0.5}), ("L1H0", "induction", {"attn_s2_s1_next": 0.4}),
                   ("L1H1", "", {})])
    q = _classes([("L0H0", "name mover", {"attn_end_io": 0.5, "direct_effect": 0.8}),
                  ("L0H1", "", {"attn_s2_s1_next": 0.1}), ("L1H0", "induction", {"attn_s2_s1_next": 0.45}),
                  ("L1H1", "duplicate token", {})])
    paired = compare.paired_effects(_effects({(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.2, (1, 1): 0.0}),
                                    _effects({(0, 0): 0.9, (0, 1): 0.1, (1, 0): 0.3, (1, 1): 0.0}))
    table = compare.head_class_table(fp, q, paired, _heads("L0H0"), _heads("L0H0", "L1H0")).set_index("component")
    assert list(table.index) == ["L0H0", "L0H1", "L1H0"]  # the FP model's classed heads only
    assert table.loc["L0H1", "survives"] == 0 and table.loc["L0H1", "score"] == "attn_s2_s1_next"
    assert (table.loc["L0H1", "score_fp"], table.loc["L0H1", "score_quantized"]) == (0.5, 0.1)
    assert (table.loc["L0H0", "effect_fp"], table.loc["L0H0", "effect_quantized"]) == (1.0, 0.9)
    assert table.loc["L1H0", "in_quantized_circuit"] == 1 and table.loc["L1H0", "in_fp_circuit"] == 0
    survival, too_few = compare.class_survival(table.reset_index(), 200, min_heads=1)
    assert survival["name_mover"].estimate == 1.0 and survival["induction"].estimate == 0.5 and too_few == {}


def test_a_class_with_too_few_heads_gets_no_interval():
    """Survival is a share over the class's heads: below the minimum it is NaN with its reason, not 0 or 1."""
    table = pd.DataFrame({"class_fp": ["name mover"] * 2 + ["induction"] * 5, "survives": [1, 1, 1, 0, 1, 1, 0]})
    survival, too_few = compare.class_survival(table, 200, min_heads=5)
    assert math.isnan(survival["name_mover"].estimate) and math.isnan(survival["name_mover"].low)
    assert survival["name_mover"].n == 2 and too_few == {"name_mover": "too few heads: 2 in the FP class, an interval needs 5"}
    induction = survival["induction"]
    assert induction.estimate == pytest.approx(3 / 5) and induction.low < 3 / 5 < induction.high and induction.n == 5


def test_spearman_known_answers():
    assert drift.spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])) == pytest.approx(1.0)
    assert drift.spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert drift.spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)  # 1 - 6*2/24
    assert math.isnan(drift.spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))


def test_method_drift_identical_reversed_and_changed(tmp_path):
    write_attributions(tmp_path / "fp" / "saliency", FP_SCORES, FP_COMPREHENSIVENESS)
    write_attributions(tmp_path / "same" / "saliency", FP_SCORES, FP_COMPREHENSIVENESS)
    write_attributions(tmp_path / "flip" / "saliency", {k: [-x for x in v] for k, v in FP_SCORES.items()},
                       {"ioi-0": 0.5, "ioi-1": 0.4, "ioi-2": 0.9})
    same, _ = drift.method_drift(tmp_path / "fp" / "saliency", tmp_path / "same" / "saliency", 200)
    assert same["token_rank_correlation"].estimate == pytest.approx(1.0)
    assert same["comprehensiveness_change"].estimate == 0.0
    flip, per_example = drift.method_drift(tmp_path / "fp" / "saliency", tmp_path / "flip" / "saliency", 200)
    assert per_example["spearman"].tolist() == pytest.approx([-1.0, -1.0, -1.0])
    assert flip["comprehensiveness_change"].estimate == pytest.approx((0.3 + 0.0 + 0.3) / 3)
    assert flip["comprehensiveness_fp"] == pytest.approx(0.4)


def test_seeded_method_gets_no_rank_correlation(tmp_path):
    write_attributions(tmp_path / "fp" / "random", FP_SCORES, FP_COMPREHENSIVENESS)
    write_attributions(tmp_path / "q" / "random", FP_SCORES, {k: v - 0.2 for k, v in FP_COMPREHENSIVENESS.items()})
    summary, _ = drift.method_drift(tmp_path / "fp" / "random", tmp_path / "q" / "random", 200)
    assert "token_rank_correlation" not in summary
    assert summary["comprehensiveness_change"].estimate == pytest.approx(-0.2)


def test_token_ids_must_match(tmp_path):
    write_attributions(tmp_path / "fp" / "saliency", FP_SCORES, FP_COMPREHENSIVENESS)
    write_attributions(tmp_path / "q" / "saliency", {"ioi-0": [1.0, 2.0, 3.0]}, {"ioi-0": 0.1})
    with pytest.raises(ValueError, match="token ids differ"):
        drift.token_rank_correlations(tmp_path / "fp" / "saliency", tmp_path / "q" / "saliency")


def test_pair_setting_and_settings_validation():
    from interpipe.settings.quant_interp import QuantInterpSettings

    assert Pair("smollm2", "smollm2-osplus-w6a6").setting == ("osplus", "w6a6")
    assert Pair("toy", "toy-rtn-w4a8").setting == ("rtn", "w4a8")
    with pytest.raises(ValueError, match="must have the keys fp and quantized"):
        QuantInterpSettings(pairs=[{"fp": "toy", "q": "toy-rtn-w6a6"}])
    with pytest.raises(ValueError, match="pairs is empty"):
        QuantInterpSettings(pairs=[])
    with pytest.raises(ValueError, match="effect_method"):
        QuantInterpSettings(effect_method="best")


def test_pair_setting_from_the_quantized_models_card(tmp_path):
    """The card's ``extra.quantization`` names method and bits, whatever the folder is called."""
    import json

    from interpipe.quant_interp.inputs import pairs_of
    from interpipe.settings.quant_interp import QuantInterpSettings

    folder = tmp_path / "toy-q"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({"name": "toy-q", "extra": {
        "base_model": "toy", "quantization": {"method": "osplus", "bits": "w6a6", "protocol": "paper"}}}))
    assert Pair("toy", "toy-q").setting == ("q", "")  # the name alone says nothing of the bits
    assert Pair("toy", "toy-q").with_card(tmp_path).setting == ("osplus", "w6a6")
    assert Pair("toy", "toy-rtn-w4a8").with_card(tmp_path).setting == ("rtn", "w4a8")  # no folder: its name
    assert Pair("toy", "toy").with_card(tmp_path).setting == ("fp", "")
    pairs = pairs_of(QuantInterpSettings(pairs=[{"fp": "toy", "quantized": "toy-q"}]), tmp_path)
    assert [p.setting for p in pairs] == [("osplus", "w6a6")]


def _circuit_folder(root, model, with_circuit):
    from interpipe.io import write_json

    folder = root / model / f"{model}-ioi"
    folder.mkdir(parents=True)
    write_json(folder / "metrics.json", {"solved": int(with_circuit)})
    pd.DataFrame([{"analysis": "z_head", "method": "attribution", "direction": "denoising", "layer": 0, "head": h,
                   "effect": 0.1 * h} for h in range(2)]).to_parquet(folder / "effects.parquet")
    _classes([("L0H0", "", {}), ("L0H1", "", {})]).to_csv(folder / "ioi_heads.csv", index=False)
    if with_circuit:
        write_json(folder / "circuit.json", {"components": ["L0H1"]})
    return folder


def test_read_circuit_run_unsolved_and_wrong_effect_method(tmp_path):
    from interpipe.quant_interp.inputs import Roots, read_circuit_run

    roots = Roots(tmp_path / "models", tmp_path / "data", tmp_path / "circuits", tmp_path / "attribute")
    _circuit_folder(roots.circuits, "fp", True)
    _circuit_folder(roots.circuits, "q", False)
    assert read_circuit_run(roots, "fp", "ioi", "attribution").heads == [Component.head(0, 1)]
    unsolved = read_circuit_run(roots, "q", "ioi", "attribution")
    assert unsolved.heads == [] and compare.overlap(_heads("L0H1"), unsolved.heads)["circuit_containment"] == 0.0
    with pytest.raises(ValueError, match="quant_interp.effect_method"):
        read_circuit_run(roots, "fp", "ioi", "exact")


def test_tokenizers_must_match(tmp_path):
    from interpipe.models.toy import build_tokenizer
    from interpipe.quant_interp.transfer import check_same_tokenizer

    prompts = ["When Mary and John went to the store , John gave a drink to"]
    for name, words in (("fp", prompts[0]), ("same", prompts[0]), ("other", "Aaron " + prompts[0])):
        build_tokenizer([words]).save_pretrained(tmp_path / name)  # word-level, sorted: "Aaron" shifts every id
    check_same_tokenizer(tmp_path / "fp", tmp_path / "same", prompts)
    with pytest.raises(ValueError, match="must keep its FP model's tokenizer"):
        check_same_tokenizer(tmp_path / "fp", tmp_path / "other", prompts)


def test_unsolved_quantized_task_has_no_effect_correlation():
    """A task the quantized model fails gets no patching: its effects are unknown, not zero."""
    import math

    import pandas as pd

    from interpipe.quant_interp.compare import effect_correlation, paired_effects

    fp = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "effect": [0.5, 0.1, -0.2]})
    unsolved = fp.assign(effect=float("nan"))
    r = effect_correlation(paired_effects(fp, unsolved), 200)
    assert math.isnan(r.estimate) and r.n == 0
    assert effect_correlation(paired_effects(fp, fp), 200).estimate == 1.0


def test_fp_circuit_is_scored_on_the_fp_runs_own_prompt_count(monkeypatch):
    """A per-task prompt count (circuits.task_prompts) is what the FP run used, so it is what is scored."""
    from interpipe.quant_interp import transfer
    from interpipe.settings.circuits import CircuitSettings

    from interpipe.circuits.bridge import PromptBatch

    seen = {}

    def batch_from_task(bridge, root, task, n, *rest):  # records the prompt count, returns a one-prompt batch
        seen[task] = n
        tokens = torch.zeros(1, 2, dtype=torch.long)
        return PromptBatch(tokens, tokens, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))

    monkeypatch.setattr(transfer, "batch_from_task", batch_from_task)
    transfer.circuit_batch(None, CircuitSettings(tasks=["ioi"], n_prompts=6, task_prompts={"ioi": 64}), "data", "ioi")
    transfer.circuit_batch(None, CircuitSettings(tasks=["sva"], n_prompts=6), "data", "sva")
    assert seen == {"ioi": 64, "sva": 6}
