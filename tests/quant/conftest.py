"""Tiny random GPT-2 (pre-LN) and BERT (post-LN) models with planted outlier channels."""

from __future__ import annotations

import pytest
import torch

from interpipe.quant.calibrate import TextBatch


def plant_outliers(model) -> None:
    """Make a few LayerNorm channels large and off-centre, as in trained transformers."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
                module.weight[3] = 12.0
                module.bias.add_(0.2 * torch.randn_like(module.bias))
                module.bias[5] = 4.0


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    plant_outliers(model)
    return model


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    plant_outliers(model)
    return model


@pytest.fixture
def batches() -> list[TextBatch]:
    """Two padded batches of random token ids (right padding)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for lengths in ([12, 9, 5], [12, 12, 7]):
        ids = torch.randint(2, 50, (len(lengths), max(lengths)), generator=g)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        out.append(TextBatch(ids, mask))
    return out
