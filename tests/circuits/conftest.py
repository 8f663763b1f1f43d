"""Fixtures of the circuit tests: a tiny random GPT-2 (word-level tokenizer) wrapped in a TransformerBridge."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from interpipe.data import tasks

N_PROMPTS = 6


def _records(task: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"circuits-test-{task}-{seed}")
    return [tasks.GENERATORS[task](rng) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A random 2-layer, 4-head GPT-2 over the words of the test prompts, saved as an HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models.toy import build_tokenizer

    texts = []
    for task in ("ioi", "sva", "colored_objects", "induction"):
        for r in _records(task, 40):
            texts += [r["prompt"], r["corrupted_prompt"], r["answer"], r["foil"]]
    tokenizer = build_tokenizer(texts)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
                        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    config.architectures = ["GPT2LMHeadModel"]
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bridge(tiny_folder):
    from interpipe.circuits import load_bridge

    return load_bridge(tiny_folder)


def batch_of(bridge, task: str, n: int = N_PROMPTS, same_length: bool = True):
    """A batch of ``task`` prompts (all of one token length when ``same_length``, as TransformerLens needs)."""
    from interpipe.circuits import make_batch

    rows = _records(task, 60)
    if same_length:
        length = len(rows[0]["prompt"].split())
        rows = [r for r in rows if len(r["prompt"].split()) == length]
    rows = rows[:n]
    return make_batch(bridge, [r["prompt"] for r in rows], [r["corrupted_prompt"] for r in rows],
                      [r["answer"] for r in rows], [r["foil"] for r in rows])


@pytest.fixture(scope="session")
def sva_batch(bridge):
    return batch_of(bridge, "sva")


@pytest.fixture(scope="session")
def ioi_batch(bridge):
    return batch_of(bridge, "ioi")
