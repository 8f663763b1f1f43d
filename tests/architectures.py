"""The architecture matrix: tiny random-initialised models of every family interpipe describes.

Each is built from a ``transformers`` config in about a second, offline, and saved as a canonical
model folder (safetensors, config, tokenizer, card) that every stage loads with
``model=hub model.source=<folder>``. They share one byte-level BPE tokenizer trained on the
prepared task texts (SmolLM2's kind of tokenizer: transformers maps some model types to their own
tokenizer class, which mangles a word-level tokenizer but leaves a byte-level BPE intact).

Shapes are chosen to exercise what differs between families: grouped-query attention (Llama and
Qwen2 have 4 query / 2 KV heads), q/k/v biases (Qwen2), fused q/k/v (GPT-2, GPT-NeoX), parallel
attention and MLP (GPT-NeoX), learned positions with an offset (OPT), post-LN (BERT).
"""

from __future__ import annotations

from pathlib import Path

import torch

CAUSAL_FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "opt")
ENCODER_FAMILIES = ("bert",)
FAMILIES = CAUSAL_FAMILIES + ENCODER_FAMILIES
UNSUPPORTED = ("gemma", "phi3")  # not described: every study must refuse them, naming the model_type

D_MODEL, N_LAYERS, N_HEADS, D_MLP, N_CTX = 32, 2, 4, 64, 128


def train_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE tokenizer (GPT-2 style, leading-space words) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def tiny_config(family: str, vocab_size: int, kind: str = "causal_lm"):
    """The ``transformers`` config of a tiny model of ``family``."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=D_MODEL, n_inner=D_MLP, n_positions=N_CTX, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, hidden_size=D_MODEL,
                                intermediate_size=D_MLP, max_position_embeddings=N_CTX, rotary_pct=0.5,
                                use_parallel_residual=True, **common)
    if family in ("llama", "qwen2"):
        cls = tf.LlamaConfig if family == "llama" else tf.Qwen2Config
        return cls(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2, hidden_size=D_MODEL,
                   intermediate_size=D_MLP, max_position_embeddings=N_CTX, tie_word_embeddings=True, **common)
    if family == "opt":
        return tf.OPTConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, hidden_size=D_MODEL,
                            ffn_dim=D_MLP, word_embed_proj_dim=D_MODEL, max_position_embeddings=N_CTX, **common)
    if family == "bert":
        return tf.BertConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, hidden_size=D_MODEL,
                             intermediate_size=D_MLP, max_position_embeddings=N_CTX, num_labels=2, **common)
    if family == "gemma":
        return tf.GemmaConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
                              hidden_size=D_MODEL, intermediate_size=D_MLP, head_dim=8, max_position_embeddings=N_CTX,
                              **common)
    if family == "phi3":
        return tf.Phi3Config(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
                             hidden_size=D_MODEL, intermediate_size=D_MLP, max_position_embeddings=N_CTX, **common)
    raise ValueError(f"no tiny config for family {family!r}")


def tiny_model(family: str, vocab_size: int, kind: str = "causal_lm", seed: int = 0):
    """A random-initialised tiny model of ``family`` in eval mode (float32, CPU)."""
    import transformers as tf

    torch.manual_seed(seed)
    auto = {"causal_lm": tf.AutoModelForCausalLM, "encoder": tf.AutoModel,
            "sequence_classifier": tf.AutoModelForSequenceClassification}[kind]
    model = auto.from_config(tiny_config(family, vocab_size, kind), attn_implementation="eager")
    with torch.no_grad():  # larger-than-default weights so heads and norms do something measurable
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
            else:  # norm gains around 1
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    return model.eval()


def save_tiny_folder(family: str, folder: Path, tokenizer, kind: str = "causal_lm", seed: int = 0) -> Path:
    """Build a tiny ``family`` model and write it as a canonical model folder (with ``card.json``)."""
    from interpipe.models.card import describe
    from interpipe.models.loading import save_model_folder

    model = tiny_model(family, len(tokenizer), kind, seed)
    card = describe(model, f"tiny-{family}", str(folder), kind)
    return save_model_folder(folder, model, tokenizer, card)


def task_texts(data_root: Path) -> list[str]:
    """Every prompt, answer and foil of the prepared tasks (the tokenizer's training text)."""
    from interpipe.data import load_task
    from interpipe.data import ALL_TASKS as TASKS

    texts: list[str] = []
    for task in TASKS:
        for split in ("train", "test"):
            try:
                rows = load_task(data_root, task, split)
            except (FileNotFoundError, ValueError):
                continue
            for column in ("prompt", "corrupted_prompt", "text", "answer", "foil"):
                if column in rows.column_names:
                    texts += [(" " + t) if column in ("answer", "foil") else t for t in rows[column] if t]
    return texts
