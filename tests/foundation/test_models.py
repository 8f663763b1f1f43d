"""Model folders: the toy model trains deterministically, folders load with plain HF classes,
MiniLM loads offline, and hub names fail fast offline."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from interpipe.hub import HubUnreachableError
from interpipe.models import ModelCard, load_model, load_pretrained, minilm_folder
from interpipe.models.packing import pack, packed_loss
from interpipe.models.toy import build_model, build_tokenizer, train_toy
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
    """Same config, same weights, whatever thread count the caller runs with (the loop fixes its own)."""
    texts = ["a b c d e f"] * 20 + ["f e d c b a"] * 20
    s = ToySettings(n_layer=1, n_head=2, n_embd=16, steps=30, batch_size=8, log_every=10, warmup_steps=3, lr=1e-2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m1, _, curve1, _ = train_toy(texts, texts[:4], s)
        torch.set_num_threads(2)
        m2, _, curve2, _ = train_toy(texts, texts[:4], s)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert curve1 == curve2
    assert curve1[-1]["loss"] < 0.5 * curve1[0]["loss"]
    with pytest.raises(ValueError, match="model.toy.threads=0"):
        ToySettings(threads=0)


def test_packed_batch_computes_each_text_as_if_alone():
    """Packed logits and loss equal one plain forward per text (the reference), answer up-weighted."""
    torch.manual_seed(0)
    model = build_model(ToySettings(n_layer=2, n_head=2, n_embd=16, n_positions=16), 30, 0, 1).eval()
    texts = [torch.randint(2, 30, (n,)) for n in (7, 5, 9, 3, 12, 1)]
    packed = pack(texts, 16, pad_id=1, answer_weight=4.0)
    assert packed.input_ids.shape[0] < len(texts)  # several texts share a row
    with torch.no_grad():
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                       attention_mask=packed.attention_mask).logits  # (R, T, V)
    num, den, found = 0.0, 0.0, 0
    for t in texts:  # find each text in the packed rows and compare with its own forward
        with torch.no_grad():
            alone = model(input_ids=t[None]).logits[0]  # (L, V)
        r, start = next((r, s) for r in range(len(packed.input_ids)) for s in range(packed.input_ids.shape[1] - len(t) + 1)
                        if torch.equal(packed.input_ids[r, s:s + len(t)], t) and packed.position_ids[r, s] == 0
                        and (len(t) == 1 or packed.position_ids[r, s + len(t) - 1] == len(t) - 1))
        assert torch.allclose(logits[r, start:start + len(t)], alone, atol=1e-5)
        found += 1
        if len(t) > 1:
            ce = torch.nn.functional.cross_entropy(alone[:-1], t[1:], reduction="none")  # (L-1,)
            w = torch.ones(len(t) - 1)
            w[-1] = 4.0
            num, den = num + float((ce * w).sum()), den + float(w.sum())
    assert found == len(texts)
    assert float(packed_loss(logits, packed)) == pytest.approx(num / den, rel=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        pack([torch.zeros(17, dtype=torch.long)], 16, 1, 1.0)


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
