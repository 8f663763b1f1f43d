"""Every training loop stops at the first non-finite loss, gradient or frozen statistic, in the step
where it appears, naming that step, before the weights are updated, and keeps its last checkpoint.

A NaN is planted at a known forward call (in the loss) or backward call (in one gradient) of each loop:
the toy GPT-2, classifier fine-tuning, bigram masks and LayerNorm removal (and its LN-kept control).
"""

from __future__ import annotations

import copy

import pytest
import torch

from interpipe.divergence import DivergenceGuard, TrainingDiverged

NAN_AT = 3  # the planted call (0-based): the loops' fourth step


class Planted:
    """Counts a module's forward calls (or a parameter's backward calls) and turns call ``at`` into NaN."""

    def __init__(self, at: int = NAN_AT):
        self.at, self.calls = at, 0

    def forward_hook(self, module, inputs, output):
        self.calls += 1
        if self.calls - 1 == self.at:
            return output * float("nan")
        return output

    def grad_hook(self, grad):
        self.calls += 1
        return grad * float("nan") if self.calls - 1 == self.at else grad


def _plant(model, where: str) -> Planted:
    planted = Planted()
    params = [p for p in model.parameters() if p.requires_grad]
    if where == "loss":  # the output head: a causal LM's unembedding, a classifier's head
        head = model.get_output_embeddings() or model.classifier
        head.register_forward_hook(planted.forward_hook)
    else:
        params[0].register_hook(planted.grad_hook)
    return planted


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_guard_names_the_checkpoint_it_keeps(tmp_path):
    ckpt = tmp_path / "checkpoint.safetensors"
    guard = DivergenceGuard("LayerNorm removal", "lower weights.lnfree.lr", ckpt)
    with pytest.raises(TrainingDiverged, match="No checkpoint had been written"):
        guard.loss(2, torch.tensor(float("inf")))
    ckpt.write_bytes(b"x")
    with pytest.raises(TrainingDiverged, match=f"step 7: non-finite statistic a = nan.*kept in {ckpt}"):
        guard.statistics(7, {"a": torch.tensor([1.0, float("nan")]), "b": 2.0})
    assert guard.gradients(1, [torch.nn.Parameter(torch.ones(2))]) == 0.0  # no gradients yet


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_toy_training_stops_at_the_planted_step(where, monkeypatch):
    from interpipe.models import toy
    from interpipe.settings.models import ToySettings

    built, original = {}, toy.build_model

    def planting_build(*args, **kwargs):
        built["model"] = original(*args, **kwargs)
        built["planted"] = _plant(built["model"], where)
        return built["model"]

    monkeypatch.setattr(toy, "build_model", planting_build)
    texts = ["a b c d e f"] * 20 + ["f e d c b a"] * 20
    s = ToySettings(n_layer=1, n_head=2, n_embd=16, steps=30, batch_size=8, log_every=100, warmup_steps=3)
    with pytest.raises(TrainingDiverged, match=f"toy GPT-2 training diverged at step {NAN_AT + 1}: "
                                               f"{'loss' if where == 'loss' else 'gradient norm'} = nan.*model.toy.lr"):
        toy.train_toy(texts, texts[:4], s)
    assert built["planted"].calls == NAN_AT + 1  # stopped in the planted step
    assert _all_finite(built["model"])  # the NaN never reached the weights


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_classifier_finetuning_stops_at_the_planted_step(where):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from interpipe.models import minilm_folder
    from interpipe.models.finetune import finetune_classifier
    from interpipe.settings.models import FinetuneSettings

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    planted = _plant(model, where)
    rows = [{"prompt": f"review {i} was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(32)]
    with pytest.raises(TrainingDiverged, match=f"classifier fine-tuning diverged at step {NAN_AT + 1}:.*model.finetune.lr"):
        finetune_classifier(model, tokenizer, rows, FinetuneSettings(steps=10, batch_size=4))
    assert planted.calls == NAN_AT + 1 and _all_finite(model)


def _batch(loaded, n: int = 12, width: int = 8):
    ids = torch.randint(3, loaded.model.config.vocab_size, (n, width), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_bigram_masks_stop_and_keep_the_last_checkpoint(where, tiny_toy_folder, tmp_path, monkeypatch):
    from interpipe.models import load_model
    from interpipe.settings.weights import BigramSettings
    from interpipe.weights.bigram_subnetwork import BigramTable, train_masks

    loaded = load_model(tiny_toy_folder)
    ids, mask = _batch(loaded)
    table = BigramTable.count(ids, mask, loaded.model.config.vocab_size, 8, 1)
    if where == "loss":
        planted = _plant(loaded.model, "loss")
    else:  # the trained parameters are the mask logits, made inside: a NaN in the gradient through the logits
        planted = Planted()
        original = BigramTable.cross_entropy

        def nan_gradient(self, logits, *args):
            logits.register_hook(planted.grad_hook)
            return original(self, logits, *args)

        monkeypatch.setattr(BigramTable, "cross_entropy", nan_gradient)
    s = BigramSettings(steps=8, batch_size=4, checkpoint_minutes=0.0, undecided_stop=1e-9)  # a checkpoint after every step
    with pytest.raises(TrainingDiverged, match=f"bigram masks diverged at step {NAN_AT}:.*weights.bigram.lr.*"
                                               f"last good checkpoint.*{tmp_path}"):
        train_masks(loaded.model, table, ids, mask, s, seed=0, checkpoint_dir=tmp_path)
    assert planted.calls == NAN_AT + 1
    assert (tmp_path / "checkpoint.safetensors").exists()  # written before the planted step, kept


@pytest.mark.parametrize(("where", "freeze"), [("loss", True), ("gradient", True), ("loss", False)])
def test_layernorm_removal_stops_at_the_planted_step(where, freeze, tiny_toy_folder, monkeypatch):
    from interpipe.models import load_model
    from interpipe.settings.weights import LNFreeSettings
    from interpipe.weights.lnfree.recipe import finetune

    loaded = load_model(tiny_toy_folder)
    ids, mask = _batch(loaded)
    model = copy.deepcopy(loaded.model)
    s = LNFreeSettings(start_step=1, gap_mlp=1, gap_qk=1, gap_v=1, gap_special=1, extra_steps=4, batch_size=4)
    original_deepcopy = copy.deepcopy
    planted = {}

    def planting_copy(obj, *args):  # finetune trains a deep copy: plant in the copy
        out = original_deepcopy(obj, *args)
        if obj is model:
            planted["p"] = _plant(out, where)
        return out

    monkeypatch.setattr(copy, "deepcopy", planting_copy)
    loop = "LayerNorm removal" if freeze else r"fine-tune control \(LN kept\)"
    with pytest.raises(TrainingDiverged, match=f"{loop} diverged at step {NAN_AT}:.*weights.lnfree.lr"):
        finetune(model, ids, mask, s, seed=0, freeze=freeze)
    assert planted["p"].calls == NAN_AT + 1


def test_layernorm_removal_stops_at_a_non_finite_frozen_scale(tiny_toy_folder, monkeypatch):
    """A scale statistic that went NaN while tracked stops the run at the step that would freeze it."""
    from interpipe.models import load_model
    from interpipe.settings.weights import LNFreeSettings
    from interpipe.weights.lnfree import recipe

    loaded = load_model(tiny_toy_folder)
    ids, mask = _batch(loaded)
    original = recipe.wrap_norms

    def poisoned(model, *args, **kwargs):
        wrapped = original(model, *args, **kwargs)
        final = wrapped[list(wrapped)[-1]]  # its calibration statistic comes out NaN and stays NaN under the running average
        final.calibration_scale = lambda quantile: torch.full_like(final.avg, float("nan"))
        return wrapped

    monkeypatch.setattr(recipe, "wrap_norms", poisoned)
    s = LNFreeSettings(start_step=1, gap_mlp=1, gap_qk=1, gap_v=1, gap_special=1, extra_steps=2, batch_size=4)
    final_step = next(e.step for e in recipe.schedule_of(loaded.model, s, (0,)) if e.phase == "final")
    with pytest.raises(TrainingDiverged, match=f"diverged at step {final_step}: non-finite statistic .*frozen scale = nan"):
        recipe.finetune(loaded.model, ids, mask, s, seed=0)


def test_a_half_precision_finetune_is_refused_before_any_work(tmp_path):
    from interpipe.models.build import BuildRequest, build_model

    req = BuildRequest(name="minilm-sentiment", source="minilm", kind="sequence_classifier", finetune_task="sentiment")
    with pytest.raises(ValueError, match="build it with dtype=float32"):
        build_model(req, tmp_path / "no-data", tmp_path / "out", dtype="bfloat16")
    assert not (tmp_path / "out").exists()


def test_guard_clips_as_clip_grad_norm_does_with_one_norm():
    """gradients(..., clip=c) leaves the same gradients as torch's clip_grad_norm_ and returns the norm before clipping."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(50, 30)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, ref):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    expected = float(torch.nn.utils.clip_grad_norm_(ref, 1.0))
    norm = DivergenceGuard("loop", "fix").gradients(0, iter(ours), clip=1.0)
    assert norm == pytest.approx(expected, rel=1e-6) and norm > 1.0
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, ref))
