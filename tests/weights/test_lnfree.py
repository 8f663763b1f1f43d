"""Norm removal (interpipe.weights.lnfree): fake norms, the schedule, special positions, the saved folder, DLA."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from interpipe.settings.weights import LNFreeSettings
from interpipe.weights.lnfree.evaluate import dla_exactness
from interpipe.weights.lnfree.fake_norm import FakeNorm, set_token_mask, unwrap_to_lnfree, wrap_norms
from interpipe.weights.lnfree.recipe import schedule_of, track
from interpipe.weights.lnfree.schedule import removal_schedule, total_steps

PROMPTS = ["The bag has a cup , a key and a box . I took out the cup and the box and kept the"] * 2
ANSWERS = ["key", "box"]
PAPER = dict(start_step=20, gap_mlp=2, gap_qk=2, gap_v=3, gap_special=12, norms_per_step=1, split_qkv=True)


def test_unfrozen_fake_norm_is_the_norm():
    ln = torch.nn.LayerNorm(8)
    torch.nn.init.normal_(ln.weight), torch.nn.init.normal_(ln.bias)
    x = torch.randn(3, 5, 8) * 4
    torch.testing.assert_close(FakeNorm(ln, 0.9)(x), ln(x))


def test_official_schedule_on_a_gpt2_small_shaped_model():
    """12 blocks in the official order and gaps: ln_2 at 20..42, ln_1 q/k at 44..66, ln_1 v at 68..101,
    ln_f at 104, position 0 at 116 (config.py of the official code); 300 steps with 183 recovery steps."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
    events = schedule_of(model, SimpleNamespace(**PAPER), special=(0,))
    steps = {phase: [e.step for e in events if e.phase == phase] for phase in ("mlp", "qk", "v", "final", "special")}
    assert steps["mlp"] == list(range(20, 43, 2)) and steps["qk"] == list(range(44, 67, 2))
    assert steps["v"] == list(range(68, 102, 3)) and steps["final"] == [104] and steps["special"] == [116]
    assert [e.norm.rsplit(".", 1)[1] for e in events if e.phase == "mlp"] == ["ln_2"] * 12
    assert {e.norm.rsplit(".", 1)[1] for e in events if e.phase in ("qk", "v")} == {"ln_1"}
    assert total_steps(events, 183) == 300  # steps 0..299: 183 recovery steps after step 116


def test_schedule_groups_norms_and_puts_position0_last():
    norms = SimpleNamespace(mlp=[f"m{i}" for i in range(4)], attn=[f"a{i}" for i in range(4)], final="f")
    s = SimpleNamespace(**{**PAPER, "start_step": 1, "norms_per_step": 2, "gap_special": 5})
    events = removal_schedule(norms, s, special=(0, 3))
    assert [(e.step, e.phase) for e in events if e.phase != "mlp"][-3:] == [(15, "final"), (20, "special"), (25, "special")]
    assert [e.position for e in events if e.phase == "special"] == [3, 0]  # the outlier first, position 0 last
    assert [e.step for e in events if e.phase == "mlp"] == [1, 1, 3, 3]


def test_the_loop_freezes_on_the_schedule(tiny_loaded, monkeypatch):
    """The training loop applies each event at its step: the frozen uses before each batch, and the
    special positions (position 0 and an outlier position 2) each on its own scale until its step."""
    from interpipe.weights.common import encode_texts
    from interpipe.weights.lnfree import recipe

    s = LNFreeSettings(start_step=1, gap_mlp=1, gap_qk=2, gap_v=1, gap_special=2, extra_steps=1, batch_size=2)
    ids, mask = encode_texts(tiny_loaded.tokenizer, PROMPTS, tiny_loaded.model)
    seen, live, original = [], [], recipe._step

    def counting(model, wrapped, *args):
        seen.append(sum(int(w.frozen.sum()) for w in wrapped.values()))
        live.append(tuple(int(p) for p in next(iter(wrapped.values())).special[next(iter(wrapped.values())).special_live]))
        return original(model, wrapped, *args)

    monkeypatch.setattr(recipe, "_step", counting)
    _, wrapped, curve, schedule = recipe.finetune(tiny_loaded.model, ids, mask, s, seed=0, special=(0, 2))
    expected = [sum(1 for row in schedule if row["phase"] != "special" and row["step"] <= t) for t in range(len(seen))]
    assert seen == expected and len(curve) == total_steps(schedule_of(tiny_loaded.model, s, (0, 2)), 1)
    released = {row["position"]: row["step"] for row in schedule if row["phase"] == "special"}
    assert released[2] < released[0]  # the outlier first, position 0 last
    assert live == [tuple(p for p in (0, 2) if t < released[p]) for t in range(len(live))]
    assert all(not w.special_live.any() and w.frozen.all() for w in wrapped.values())


def _planted(x: torch.Tensor, mask: torch.Tensor, position: int, factor: float) -> FakeNorm:
    norm = FakeNorm(torch.nn.LayerNorm(8), ema=0.0, special=(0, position))
    x[:, position] *= factor
    norm.track = True
    set_token_mask({"n": norm}, mask)
    norm(x)
    return norm


def test_a_planted_outlier_position_keeps_its_own_scale_until_its_step():
    """Position 3 planted 50x: found as special, divides by its own frozen scale until released."""
    from interpipe.weights.lnfree.recipe import special_positions

    x, mask = torch.randn(4, 6, 8), torch.ones(4, 6, dtype=torch.bool)
    detector = FakeNorm(torch.nn.LayerNorm(8), ema=0.0)
    detector.track = True
    x_planted = x.clone()
    x_planted[:, 3] *= 50
    detector(x_planted)
    assert special_positions({"n": detector}, factor=10.0, max_special=4) == (0, 3)
    norm = _planted(x.clone(), mask, 3, 50.0)
    xc = x_planted - x_planted.mean(-1, keepdim=True)
    own = (xc[:, 3].pow(2).mean(-1) + 1e-5).sqrt().mean()
    assert float(norm.avg_special[1]) == pytest.approx(float(own), rel=1e-5)
    norm.track = False
    norm.freeze("all")
    torch.testing.assert_close(norm(x_planted)[:, 3], xc[:, 3] / norm.avg_special[1])  # its own scale
    torch.testing.assert_close(norm(x_planted)[:, 2], xc[:, 2] / norm.avg)
    norm.release(3)
    torch.testing.assert_close(norm(x_planted)[:, 3], xc[:, 3] / norm.avg)  # released: the shared one


def test_scales_average_real_ordinary_tokens_only():
    """Padding and the special positions stay out of the shared mean (what the frozen norm divides by)."""
    norm = FakeNorm(torch.nn.LayerNorm(8), ema=0.0, special=(0,))
    x = torch.randn(2, 5, 8)
    x[:, 0] *= 100  # a massive first position
    x[1, 3:] *= 1000  # padding
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    norm.track = True
    set_token_mask({"n": norm}, mask)
    norm(x)
    xc = x - x.mean(-1, keepdim=True)
    std = (xc.pow(2).mean(-1) + 1e-5).sqrt()  # (batch, pos)
    ordinary = mask.clone()
    ordinary[:, 0] = False
    assert float(norm.avg) == pytest.approx(float(std[ordinary].mean()), rel=1e-5)
    assert float(norm.avg_special[0]) == pytest.approx(float(std[:, 0].mean()), rel=1e-5)
    assert norm.first_ratio() > 50


def test_a_norm_with_a_live_special_position_refuses_to_unwrap():
    norm = FakeNorm(torch.nn.LayerNorm(8), ema=0.0, special=(0,))
    norm.track = True
    norm(torch.randn(2, 4, 8))
    norm.freeze("all")
    model = torch.nn.Sequential()
    model.add_module("norm", norm)
    model.config = SimpleNamespace()
    with pytest.raises(ValueError, match="own scale at positions \\[0\\]"):
        unwrap_to_lnfree(model, {"norm": norm}, 1e12)


def test_auxiliary_loss_is_zero_for_equal_scales_and_grows_with_spread():
    norm = FakeNorm(torch.nn.LayerNorm(8), ema=0.0, special=(0,))
    norm.aux = True
    x = torch.nn.functional.normalize(torch.randn(2, 5, 8) - 0.0, dim=-1)
    x = x - x.mean(-1, keepdim=True)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()  # every token's std 1
    norm(x)
    assert float(norm.aux_term) == pytest.approx(0.0, abs=1e-6)
    x[:, 2] *= 3
    norm(x)
    assert float(norm.aux_term) > 0.1


def test_auxiliary_loss_pulls_a_massive_position0_towards_the_others():
    """Every scale 1 but position 0's 100 (2 of 10 tokens): the term is 2 log(100)^2 / 10 (position 0 counted,
    as the official loss counts BOS), the mean taken over the ordinary tokens' running scale 1."""
    norm = FakeNorm(torch.nn.RMSNorm(4, eps=0.0), ema=0.0, kind="rmsnorm", special=(0,))
    norm.aux, norm.avg = True, torch.tensor(1.0)
    x = torch.ones(2, 5, 4)
    x[:, 0] *= 100
    norm(x)
    assert float(norm.aux_term) == pytest.approx(math.log(100) ** 2 / 5, rel=1e-5)


def freeze_everything(model, tokenizer, texts, v_factor: float = 1.0) -> dict[str, FakeNorm]:
    """Every norm frozen at its scales over ``texts``, the v use's scale ``v_factor`` times the q/k one
    (so that folding the ratio into the value weights is exercised), special positions released."""
    from interpipe.weights.common import encode_texts

    wrapped = wrap_norms(model, 0.9, split_qkv=True, special=(0,))
    ids, mask = encode_texts(tokenizer, texts, model)
    track(model, wrapped, ids, mask, batch_size=2)
    for norm in wrapped.values():
        for use in norm.uses:
            norm.freeze(use)
        if norm.uses == ("qk", "v"):
            norm.frozen_scale[1] *= v_factor
        norm.release(0)
    return wrapped


@pytest.fixture(scope="module")
def lnfree_folder(tiny_loaded, tmp_path_factory):
    """The tiny toy with every norm frozen (no fine-tuning), saved and reloaded."""
    from interpipe.models import describe, load_model, save_model_folder

    model = copy.deepcopy(tiny_loaded.model).eval()
    wrapped = freeze_everything(model, tiny_loaded.tokenizer, PROMPTS, v_factor=1.7)
    ids = tiny_loaded.tokenizer(PROMPTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        frozen_logits = model(input_ids=ids).logits
    unwrap_to_lnfree(model, wrapped, 1e12)
    folder = tmp_path_factory.mktemp("lnfree") / "toy-lnfree"
    save_model_folder(folder, model, tiny_loaded.tokenizer, describe(model, "toy-lnfree", "test", "causal_lm"))
    return folder, ids, frozen_logits, load_model(folder)


def test_saved_lnfree_model_matches_frozen_fake_norms(lnfree_folder):
    """save_pretrained -> AutoModelForCausalLM.from_pretrained: the same logits, with the v scale 1.7x
    the q/k scale folded into c_attn's value columns and bias."""
    from transformers import AutoModelForCausalLM

    folder, ids, frozen_logits, loaded = lnfree_folder
    assert loaded.model.config.layer_norm_epsilon == 1e12
    stock = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, frozen_logits, rtol=1e-4, atol=1e-4)


def test_dla_sum_equals_logit_and_direct_effect_only_without_ln(tiny_loaded, tiny_toy_folder, lnfree_folder):
    """Tolerance: 1e-4 logit units (float32). Sum of DLA + LN bias term equals the logit for both
    models; per-component DLA equals the true direct effect only for the LN-free model."""
    folder, _, _, loaded = lnfree_folder
    free = dla_exactness(loaded.model, loaded.tokenizer, folder, PROMPTS, ANSWERS)
    orig = dla_exactness(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder, PROMPTS, ANSWERS)
    assert free["dla_sum_max_abs"] < 1e-4 and orig["dla_sum_max_abs"] < 1e-4
    assert free["dla_vs_direct_max_abs"] < 1e-4
    assert orig["dla_vs_direct_max_abs"] > 100 * free["dla_vs_direct_max_abs"]


def test_unfrozen_norm_refuses_to_unwrap(tiny_loaded):
    model = copy.deepcopy(tiny_loaded.model)
    wrapped = wrap_norms(model, 0.9)
    with pytest.raises(ValueError, match="never frozen"):
        unwrap_to_lnfree(model, wrapped, 1e12)


@pytest.mark.parametrize("kwargs, key", [({"gap_mlp": 0}, "gap_mlp"), ({"ema": 1.0}, "ema"), ({"lr": 0}, "lr"),
                                         ({"max_tokens": 1}, "max_tokens"), ({"min_lr": 1.0}, "min_lr"),
                                         ({"outlier_factor": 1.0}, "outlier_factor"),
                                         ({"on_divergence": "skip"}, "on_divergence")])
def test_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=f"weights.lnfree.{key}"):
        LNFreeSettings(**kwargs)


def test_learning_rate_warms_up_then_decays_to_min_lr():
    from interpipe.weights.lnfree.recipe import lr_at

    s = LNFreeSettings(lr=6e-4, min_lr=3e-4, warmup_steps=20)
    lrs = [lr_at(t, 300, s) for t in range(300)]
    assert lrs[0] == pytest.approx(3e-5) and lrs[19] == pytest.approx(6e-4) and lrs[-1] == pytest.approx(3e-4)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[19:], lrs[20:]))


def test_verdict_says_not_recovered_when_far_above_the_control():
    from interpipe.weights.lnfree.evaluate import headline_frame, verdict

    metrics = {"ce_original": 2.8, "ce_control": 2.83, "ce_lnfree": 7.0, "ce_lnfree_ci_high": 7.2,
               "ce_frozen_no_finetune": 10.7, "ce_delta_vs_control": 4.17, "dla_agreement_lnfree": 0.3}
    metrics.update(verdict(metrics, within=0.25))
    assert metrics["recovered"] == 0 and metrics["verdict"].startswith("not recovered")
    frame = headline_frame("m", metrics)
    assert frame.loc[frame.metric == "recovered", "note"].item().startswith("not recovered")
    assert "not recovered" in frame.loc[frame.metric == "dla_agreement", "note"].item()
    good = {**metrics, "ce_lnfree": 2.9, "ce_lnfree_ci_high": 2.95}
    assert verdict(good, within=0.25)["recovered"] == 1


def test_dla_agreement_known_answers():
    """Same attributions: r = 1; sign-flipped: r = -1; unrelated: near 0."""
    from interpipe.weights.lnfree.evaluate import dla_agreement

    a = torch.randn(40, 7)
    out = dla_agreement({"original": a, "same": a.clone(), "flipped": -a, "other": torch.randn(40, 7)})
    assert out["dla_agreement_same"] == pytest.approx(1.0) and out["dla_agreement_flipped"] == pytest.approx(-1.0)
    assert abs(out["dla_agreement_other"]) < 0.3
    assert out["dla_agreement_other_ci_low"] < out["dla_agreement_other"] < out["dla_agreement_other_ci_high"]


def test_a_diverged_removal_is_reported_not_recovered():
    from interpipe.weights.lnfree.evaluate import headline_frame, verdict

    metrics = {"ce_original": 5.2, "ce_control": 2.99, "diverged_at_step": 1, "diverged_after": "after the mlp event at step 1",
               "nonfinite_texts_frozen_no_finetune": 0.56, "ce_frozen_no_finetune_finite_texts": 6.8}
    metrics.update(verdict(metrics, within=0.3))
    assert metrics["recovered"] == 0 and "diverged at step 1" in metrics["verdict"] and "56%" in metrics["verdict"]
    frame = headline_frame("m", metrics)
    assert set(frame.metric) == {"recovered", "nonfinite_texts_frozen_no_finetune"}  # no LN-free CE to quote


def test_gpu_preset_is_the_papers_300_steps_in_the_official_order():
    from stages import schema
    from tests.conftest import compose

    s = schema.validate(compose(["model=smollm2", "weights=smollm2_gpu", "weights.study=lnfree"])).weights.lnfree
    norms = SimpleNamespace(mlp=[f"m{i}" for i in range(30)], attn=[f"a{i}" for i in range(30)], final="f")
    events = removal_schedule(norms, s, special=(0,))
    assert [e.phase for e in events][::15][:4] == ["mlp", "mlp", "qk", "qk"] and events[-1].phase == "special"
    assert total_steps(events, s.extra_steps) == 300 and (s.lr, s.min_lr, s.warmup_steps, s.grad_clip) == (6e-4, 3e-4, 20, 1.0)


def test_a_quantile_statistic_freezes_at_that_quantile_of_the_ordinary_scales():
    """Planted token scales 1..10 at positions 1..10 (position 0 special): the mean freezes at 5.5, the
    0.9 quantile at 9.1 (linear interpolation), both over the calibration tokens kept."""
    norm = FakeNorm(torch.nn.RMSNorm(4, eps=0.0), ema=0.9, kind="rmsnorm", special=(0,), quantile=0.9)
    x = torch.ones(1, 11, 4) * torch.arange(0, 11, dtype=torch.float).view(1, 11, 1)  # RMS of position p is p
    x[0, 0] = 1000.0
    norm.kept, norm.track = [], True
    norm(x)
    assert float(norm.avg) == pytest.approx(9.1, rel=1e-5)  # the running statistic is the quantile too
    assert float(norm.calibration_scale(None)) == pytest.approx(5.5, rel=1e-5)
    assert float(norm.calibration_scale(0.9)) == pytest.approx(9.1, rel=1e-5)
    norm.freeze("all", norm.calibration_scale(0.5))
    torch.testing.assert_close(norm(x)[0, 1:], x[0, 1:] / 5.5 * norm.weight)


def test_auto_statistic_prefers_fewest_overflowing_texts_then_lowest_ce(monkeypatch):
    """Choose on the calibration texts: a candidate finite everywhere beats a lower CE that overflows
    on one text; among equally finite ones the lower CE wins."""
    import numpy as np

    from interpipe.weights.lnfree import evaluate, recipe

    planted = {None: [2.0, float("nan"), 2.0], 0.75: [3.0, 3.0, 3.0], 0.9: [2.5, 2.5, 2.6], 0.95: [2.0, float("inf"), 2.0]}
    frozen_at = []

    def losses(model, tokenizer, texts, batch_size):  # summed nll and token count per text: one token each
        return np.array(planted[frozen_at[-1]]), np.ones(len(texts))

    monkeypatch.setattr(evaluate, "text_losses", losses)
    monkeypatch.setattr(recipe, "_freeze_all", lambda wrapped, q: frozen_at.append(q))
    s = LNFreeSettings(scale_stat="auto", auto_quantiles=[0.75, 0.9, 0.95])
    texts = ["a", "b", "c"]
    quantile, table = recipe.choose_statistic(None, None, {}, texts, s, 8)
    assert quantile == 0.9 and table.loc[table.chosen, "statistic"].item() == "quantile 0.9"
    assert table.set_index("statistic").loc["mean", "nonfinite_texts"] == pytest.approx(1 / 3)
    assert table.set_index("statistic").loc["quantile 0.9", "ce_finite_texts"] == pytest.approx(7.6 / 3)
    assert recipe.choose_statistic(None, None, {}, texts, LNFreeSettings(scale_stat="mean"), 8)[0] is None


def _bare_word_tokenizer():
    """A fast word-level tokenizer that puts nothing first (as SmolLM2's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<|im_end|>", "[UNK]", "the", "cat", "sat", "Mary"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", additional_special_tokens=["<|endoftext|>"])


def test_first_token_is_put_first_survives_a_stock_reload_and_leaves_answers_alone(tmp_path):
    from transformers import AutoTokenizer

    from interpipe.models.tokens import answer_token_id, with_first_token

    bare = _bare_word_tokenizer()
    assert bare("the cat").input_ids == [3, 4]
    first = with_first_token(bare, "<|endoftext|>")
    assert first("the cat").input_ids == [0, 3, 4] and bare("the cat").input_ids == [3, 4]  # a copy
    assert answer_token_id(first, "Mary") == 6  # answers are encoded without it
    first.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("the cat sat").input_ids == [0, 3, 4, 5]
    assert with_first_token(first, "<|endoftext|>") is first  # already first: unchanged
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        with_first_token(bare, "<|begin|>")


def test_packed_rows_start_with_the_first_token_and_hold_it_nowhere_else(tiny_loaded, data_root):
    from interpipe.models.loading import LoadedModel
    from interpipe.weights.lnfree.study import corpus

    loaded = LoadedModel(tiny_loaded.model, _bare_word_tokenizer(), tiny_loaded.card)
    s = LNFreeSettings(pack=8, first_token="<|endoftext|>", max_train_texts=40)
    _, _, ids, mask = corpus(loaded, data_root, s)
    assert ids.shape[1] == 8 and bool(mask.all())
    assert bool((ids[:, 0] == 0).all()) and not bool((ids[:, 1:] == 0).any())
    assert bool((ids == 1).any())  # texts are joined by the EOS


@pytest.mark.parametrize("kwargs, key", [({"scale_stat": "median"}, "scale_stat"), ({"scale_quantile": 1.0}, "scale_quantile"),
                                         ({"auto_quantiles": [0.9, 0.0]}, "auto_quantiles"), ({"first_token": ""}, "first_token")])
def test_bad_statistic_and_first_token_settings(kwargs, key):
    with pytest.raises(ValueError, match=f"weights.lnfree.{key}"):
        LNFreeSettings(**kwargs)


def test_a_gradual_release_moves_geometrically_from_the_own_scale_to_the_shared_one():
    """release_steps=4: the position keeps 3/4, 1/2, 1/4, then none of its own scale on four consecutive
    steps; at weight 1/2 it divides by the geometric mean of its own scale (100) and the shared one (1)."""
    norms = SimpleNamespace(mlp=["m0"], attn=["a0"], final="f")
    s = SimpleNamespace(**{**PAPER, "start_step": 1, "gap_special": 2, "release_steps": 4})
    events = [e for e in removal_schedule(norms, s, special=(0,)) if e.phase == "special"]
    final = next(e.step for e in removal_schedule(norms, s, special=(0,)) if e.phase == "final")
    assert [(e.step - final, e.weight) for e in events] == [(2, 0.75), (3, 0.5), (4, 0.25), (5, 0.0)]
    norm = FakeNorm(torch.nn.RMSNorm(4, eps=0.0), ema=0.0, kind="rmsnorm", special=(0,))
    norm.avg.fill_(1.0), norm.avg_special.fill_(100.0)
    norm.freeze("all")
    x = torch.ones(1, 3, 4)
    x[0, 0] *= 100
    norm.release(0, 0.5)
    torch.testing.assert_close(norm(x)[0, 0], x[0, 0] / 10.0)
    torch.testing.assert_close(norm(x)[0, 1], x[0, 1] / 1.0)
    norm.release(0, 0.0)
    torch.testing.assert_close(norm(x)[0, 0], x[0, 0] / 1.0)
    assert not bool(norm.special_live.any())
