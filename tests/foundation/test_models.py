"""Model folders: the toy model trains deterministically, folders load with plain HF classes,
MiniLM loads offline, and hub names fail fast offline."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from interpipe.hub import HubUnreachableError
from interpipe.models import ModelCard, load_model, load_pretrained, minilm_folder
from interpipe.models.toy import answer_weighted_loss, build_tokenizer, train_toy
from interpipe.settings.models import ToySettings


def test_word_tokenizer_is_one_token_per_word_with_bos():
    tok = build_tokenizer(["Mary gave a book to John"])
    ids = tok("John gave Mary a book")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 6
    assert tok.decode(ids, skip_special_tokens=True) == "John gave Mary a book"
    assert tok.encode(" Mary", add_special_tokens=False) == [tok.convert_tokens_to_ids("Mary")]


def test_canonical_folder_loads_with_plain_transformers(tiny_toy_folder):
    card = ModelCard.load(tiny_toy_folder)
    assert card.kind == "causal_lm" and card.n_layers == 2 and card.training_curve
    model = AutoModelForCausalLM.from_pretrained(tiny_toy_folder)
    tok = AutoTokenizer.from_pretrained(tiny_toy_folder)
    ids = tok("When Mary and John went to the store", return_tensors="pt")["input_ids"]
    ours = load_model(tiny_toy_folder)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ours.model(ids).logits)
    assert sum(p.numel() for p in model.parameters()) == card.n_params


def test_toy_training_is_deterministic_and_learns():
    texts = ["a b c d e f"] * 20 + ["f e d c b a"] * 20
    s = ToySettings(n_layer=1, n_head=2, n_embd=16, steps=30, batch_size=8, log_every=10, warmup_steps=3, lr=1e-2)
    m1, _, curve1, _ = train_toy(texts, texts[:4], s)
    m2, _, curve2, _ = train_toy(texts, texts[:4], s)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert curve1 == [{**c, } for c in curve2]
    assert curve1[-1]["loss"] < 0.5 * curve1[0]["loss"]


def test_answer_weighted_loss_matches_hand_computation():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), reduction="none").reshape(2, 3)
    expected = (ce[0, 0] + ce[0, 1] + 4 * ce[0, 2] + 4 * ce[1, 0]) / (1 + 1 + 4 + 4)
    assert torch.allclose(answer_weighted_loss(logits, targets, mask, 4.0), expected)


def test_minilm_loads_offline_and_embeds():
    model, tok, _ = load_pretrained("minilm", "encoder")
    ref = AutoModel.from_pretrained(minilm_folder())
    enc = tok(["a sentence"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc).last_hidden_state, ref(**enc).last_hidden_state)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_hub_name_offline_fails_fast_with_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="local folder|model.source"):
        load_pretrained("no-such-org/no-such-model-xyz", "causal_lm")
    assert time.perf_counter() - start < 15


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="card.json"):
        load_model(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained("./no/such/folder", "causal_lm")


def test_dtype_is_honoured(tiny_toy_folder):
    loaded = load_model(tiny_toy_folder, dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("damage", ["truncate", "header", "config"])
def test_damaged_model_folder_names_the_file_and_the_fix(tiny_toy_folder, tmp_path, damage):
    import shutil

    from interpipe.models.loading import BrokenModelFolder, load_model

    folder = tmp_path / "toy"
    shutil.copytree(tiny_toy_folder, folder)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        broken = weights
    elif damage == "header":
        weights.write_bytes(b"\x00" * 16)
        broken = weights
    else:
        (folder / "config.json").write_text("{not json")
        broken = folder / "config.json"
    with pytest.raises(BrokenModelFolder) as err:
        load_model(folder)
    assert str(broken) in str(err.value) and "model stage" in str(err.value)
