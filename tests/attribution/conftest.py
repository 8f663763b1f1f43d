"""Tiny random models and encoded batches for the attribution tests (no network, seconds)."""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import ScoredModel, encode_rows

PROMPTS = [
    ("the food was bland and the staff was", "awful", [[27, 32]]),
    ("the room was fine and the view was really", "superb", [[0, 3]]),
    ("When Anna and Bob went to the shop , Bob gave a pen to", "Anna", [[5, 9], [41, 44]]),
]


def rows_for(prompts=PROMPTS, label: int = 1) -> list[dict]:
    return [{"example_id": f"ex-{i}", "task": "t", "prompt": p, "answer": a, "cue_spans": c, "label": label}
            for i, (p, a, c) in enumerate(prompts)]


@pytest.fixture(scope="session")
def gpt2():
    """A tiny random GPT-2 with a word-level tokenizer over the test prompts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models.toy import build_tokenizer

    tokenizer = build_tokenizer([f"{p} {a}" for p, a, _ in PROMPTS])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def bert():
    """A tiny random BERT sequence classifier with MiniLM's (real, offline) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from interpipe.models import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def gpt2_case(gpt2):
    model, tokenizer = gpt2
    return ScoredModel(model, "causal_lm"), encode_rows(tokenizer, rows_for(), "causal_lm", 32), tokenizer


@pytest.fixture(scope="session")
def bert_case(bert):
    model, tokenizer = bert
    return ScoredModel(model, "sequence_classifier"), encode_rows(tokenizer, rows_for(), "sequence_classifier", 64), tokenizer


@pytest.fixture(params=["gpt2", "bert"])
def case(request):
    return request.getfixturevalue(f"{request.param}_case")
