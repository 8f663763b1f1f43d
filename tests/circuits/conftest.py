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


PLANTED = (1, 2)  # (layer, head): the only head of the planted model that writes to the residual stream


@pytest.fixture(scope="session")
def planted_folder(tiny_folder, tmp_path_factory) -> Path:
    """A hand-built 2-layer GPT-2 whose IOI circuit is known: the single head L1H2.

    Every other head's output projection and every MLP's output are zero, so nothing but L1H2 (and
    the embeddings) reaches the logits. L1H2 attends uniformly (zero queries) and writes minus
    ``4 x`` a projection of the names it reads (tied embeddings, no position embeddings): a name seen
    twice (S) is pushed down more than one seen once (IO), so clean IOI prompts prefer IO, and the
    ABC prompts (three names once each) do not. Ablating L1H2 removes the behaviour; ablating any
    other head changes nothing.
    """
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_folder).eval()
    layer, head = PLANTED
    d_model, n_heads = model.config.n_embd, model.config.n_head
    d_head = d_model // n_heads
    from interpipe.data import vocab
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    names = sorted({tokenizer.encode(" " + n, add_special_tokens=False)[0] for n in vocab.NAMES})
    with torch.no_grad():
        wte = model.transformer.wte.weight  # (vocab, d_model), tied to the unembedding
        wte[:, :d_head] = 0.0
        unit = torch.randn(len(names), d_head, generator=torch.Generator().manual_seed(0))
        wte[names] = 0.0
        wte[names, :d_head] = 3.0 * unit / unit.norm(dim=-1, keepdim=True)
        model.transformer.wpe.weight.zero_()
        for i, block in enumerate(model.transformer.h):
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
            block.attn.c_proj.bias.zero_()
            block.attn.c_attn.bias.zero_()
            block.attn.c_proj.weight.zero_()  # (n_heads * d_head, d_model): rows of each head's W_O
            if i == layer:
                qkv = block.attn.c_attn.weight  # (d_model, 3 * d_model): W_Q | W_K | W_V, heads in blocks of d_head
                qkv[:, head * d_head:(head + 1) * d_head] = 0.0  # zero queries: uniform causal attention
                eye = torch.eye(d_model)[:, :d_head]  # (d_model, d_head): read the first d_head dims
                qkv[:, 2 * d_model + head * d_head: 2 * d_model + (head + 1) * d_head] = eye
                block.attn.c_proj.weight[head * d_head:(head + 1) * d_head] = -4.0 * eye.T  # write them back, negated
    folder = tmp_path_factory.mktemp("planted_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def planted(planted_folder):
    from interpipe.circuits import load_bridge

    return load_bridge(planted_folder)


def ioi_rows(n: int, seed: int = 0) -> list[dict]:
    """IOI records with their template labels (all six templates, mixed lengths)."""
    rows = _records("ioi", n, seed)
    for r in rows:
        r["template"] = "|".join(r["key"].split("|")[:2])
    return rows


def planted_batch(bridge, n: int = 24, n_reference: int = 48):
    from interpipe.circuits import make_batch

    rows, ref = ioi_rows(n), ioi_rows(n_reference, seed=1)
    return make_batch(bridge, [r["prompt"] for r in rows], [r["corrupted_prompt"] for r in rows],
                      [r["answer"] for r in rows], [r["foil"] for r in rows], templates=[r["template"] for r in rows],
                      reference_prompts=[r["corrupted_prompt"] for r in ref],
                      reference_templates=[r["template"] for r in ref])
