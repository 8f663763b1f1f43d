"""What a migration keeps beyond the weights (:class:`~interpipe.quant.migrate.Migration`): input shifts
and post-LN shortcut restores held by the caller, nothing stored on the Hugging Face modules, the
exact arithmetic of both, and migrated folders that reload to bitwise the same logits."""

from __future__ import annotations

import copy

import pytest
import torch

from interpipe.quant.arch import describe_arch
from interpipe.quant.calibrate import calibrate
from interpipe.quant.fake import ActSpec, WeightSpec
from interpipe.quant.layers import QuantLinear, TokenMask, wrap_layers
from interpipe.quant.migrate import Migration, SearchGrid, migrate

W6, A6_DYNAMIC = WeightSpec(6), ActSpec(6, granularity="per_token_dynamic")  # no calibrated range needed
FP = WeightSpec(16), ActSpec(16, granularity="per_token_dynamic")  # 16 bits: not quantized


def test_input_shift_and_its_bias_cancel_exactly_on_a_hand_built_linear():
    """``W (x - delta) + b + W delta == W x + b``: small integers, so every float operation is exact."""
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.0, 3.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[[2.0, 1.0, 4.0], [1.0, -2.0, 3.0]]])  # (batch, pos, d_in)
    migration = Migration()
    migration.add_input_shift("lin", torch.tensor([1.0, -1.0, 0.0]))
    migration.add_input_shift("lin", torch.tensor([0.0, 0.0, 2.0]))  # a second shift composes: the sum
    delta = migration.input_shifts["lin"]
    assert torch.equal(delta, torch.tensor([1.0, -1.0, 2.0]))
    layer = QuantLinear(lin, "lin", "qkv", *FP, TokenMask(), input_shift=delta)
    assert torch.equal(layer(x), lin(x))  # fp mode: the original layer
    layer.set_mode("quant")
    by_hand = torch.tensor([[[0.5, 6.0], [-5.5, -4.0]]])  # W x + b, worked out on paper
    assert torch.equal(lin(x), by_hand)
    assert torch.equal(layer(x), by_hand)  # W (x - delta) + b + W delta, the shift-aware path
    assert torch.equal((x - delta) @ lin.weight.t() + lin.bias + lin.weight @ delta, by_hand)


class _Holder(torch.nn.Module):
    """A parent module holding one ``BertSelfOutput`` as ``out`` (a model path for the restore)."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertSelfOutput

        torch.manual_seed(0)
        self.out = BertSelfOutput(BertConfig(hidden_size=4, hidden_dropout_prob=0.0)).eval()


def test_shortcut_restore_feeds_the_residual_add_h_tilde_times_s_plus_z():
    """The hooked module computes exactly the plain module on ``h~ * s + z`` (positional or keyword)."""
    holder = _Holder()
    plain = copy.deepcopy(holder.out)
    hidden, residual = torch.randn(1, 3, 4), torch.randn(1, 3, 4)  # (batch, pos, d_model)
    s1, z1 = torch.tensor([1.0, 2.0, 0.5, 4.0]), torch.tensor([0.0, -1.0, 0.25, 3.0])
    migration = Migration()
    migration.add_shortcut(holder, "out", s1, z1)
    with torch.no_grad():
        assert torch.equal(holder.out(hidden, residual), plain(hidden, residual * s1 + z1))
        assert torch.equal(holder.out(hidden, input_tensor=residual), plain(hidden, residual * s1 + z1))
        s2, z2 = torch.tensor([2.0, 0.5, 1.0, 1.0]), torch.tensor([1.0, 0.0, -0.5, 0.0])
        migration.add_shortcut(holder, "out", s2, z2)  # composes: the new restore first, then the old one
        assert len(holder.out._forward_pre_hooks) == 1
        assert torch.equal(holder.out(hidden, residual), plain(hidden, residual * (s2 * s1) + (z2 * s1 + z1)))
        later = Migration()  # a later migration of the same model, held apart: its restore runs first
        s3, z3 = torch.tensor([0.5, 1.0, 2.0, 1.0]), torch.tensor([0.0, 2.0, 0.0, -1.0])
        later.add_shortcut(holder, "out", s3, z3)
        restored = (residual * s3 + z3) * (s2 * s1) + (z2 * s1 + z1)
        assert torch.equal(holder.out(hidden, residual), plain(hidden, restored))
        later.remove()
        migration.remove()
        assert torch.equal(holder.out(hidden, residual), plain(hidden, residual))  # the plain module again
    assert not [k for k in vars(holder.out) if "interpipe" in k]


def _planted_llama():
    from tests.architectures import tiny_model
    from tests.quant.test_architectures import plant_outliers

    model = tiny_model("llama", 50)
    model.set_attn_implementation("sdpa")  # as a loaded folder runs, so logits compare bitwise
    plant_outliers(model)
    return model


def _logits(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = [model(input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches]
    return [o.logits if hasattr(o, "logits") else o.last_hidden_state for o in outs]


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_migration_stores_nothing_on_the_model(family, tiny_bert, batches):
    model = tiny_bert if family == "bert" else _planted_llama()
    keys, kinds = list(model.state_dict()), {n: type(m) for n, m in model.named_modules()}
    arch = describe_arch(model)
    migration = migrate(model, arch, calibrate(model, arch, batches, "cpu", keep_pair_inputs=True), "osplus", W6,
                        A6_DYNAMIC, grid=SearchGrid(3, 0.0))
    assert list(model.state_dict()) == keys and {n: type(m) for n, m in model.named_modules()} == kinds
    assert not [(n, k) for n, m in model.named_modules() for k in vars(m) if "interpipe" in k]
    if family == "bert":  # post-LN: one restore per residual module, nothing to shift
        assert set(migration.shortcuts) == {p.shortcut for p in arch.pairs} and not migration.input_shifts
    else:  # RMSNorm: every linear behind a norm has its shift, no shortcut
        assert set(migration.input_shifts) == {lin for p in arch.pairs for lin in p.linears}
        assert not migration.shortcuts


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_migrated_folder_reloads_to_bitwise_the_same_logits(family, tiny_bert, batches, tmp_path):
    """FP logits, and fake-quantized logits (with the input shifts read back), equal before save and after load."""
    from interpipe.models import ModelCard
    from interpipe.models.toy import build_tokenizer
    from interpipe.quant.export import load_migrated, save_migrated

    model = tiny_bert if family == "bert" else _planted_llama()
    arch = describe_arch(model)
    migration = migrate(model, arch, calibrate(model, arch, batches, "cpu", keep_pair_inputs=True), "osplus", W6,
                        A6_DYNAMIC, grid=SearchGrid(3, 0.0))
    kind = "encoder" if family == "bert" else "causal_lm"
    save_migrated(tmp_path / "m", model, migration, build_tokenizer(["a b"]), ModelCard("tiny", "test", kind),
                  arch.style, "osplus")
    loaded = load_migrated(tmp_path / "m")
    assert set(loaded.migration.input_shifts) == set(migration.input_shifts)
    assert all(torch.equal(loaded.migration.input_shifts[k], v) for k, v in migration.input_shifts.items())
    assert set(loaded.migration.shortcuts) == set(migration.shortcuts)
    runs = []
    for m, held in ((model, migration), (loaded.model.eval(), loaded.migration)):
        fp = _logits(m, batches)
        layers = wrap_layers(m, arch.targets, W6, A6_DYNAMIC, TokenMask(), input_shifts=held.input_shifts)
        for layer in layers.values():
            layer.set_mode("quant")
        runs.append((fp, _logits(m, batches)))
    (fp_before, q_before), (fp_after, q_after) = runs
    assert all(torch.equal(a, b) for a, b in zip(fp_before, fp_after))
    assert all(torch.equal(a, b) for a, b in zip(q_before, q_after))
    assert max(float((a - b).abs().max()) for a, b in zip(fp_before, q_before)) > 1e-3  # W6A6 does change them


def test_error_tracking_outside_a_covering_block_raises(tiny_gpt2, batches):
    """A runner that forgets ``tokens.covering(mask)`` fails instead of counting padding tokens."""
    arch = describe_arch(tiny_gpt2)
    tokens = TokenMask()
    layers = wrap_layers(tiny_gpt2, arch.targets[:1], W6, A6_DYNAMIC, tokens, input_shifts={})
    layer = next(iter(layers.values()))
    layer.set_mode("quant")
    layer.track_error = True
    b = batches[0]
    assert not bool(b.mask.all())  # the batch is padded
    with torch.no_grad(), pytest.raises(RuntimeError, match="covering"):
        tiny_gpt2(input_ids=b.input_ids, attention_mask=b.attention_mask)
    with torch.no_grad(), tokens.covering(b.mask):
        tiny_gpt2(input_ids=b.input_ids, attention_mask=b.attention_mask)
    d_out = layer.weight.shape[0]
    assert layer.local.count == int(b.mask.sum()) * d_out  # the real tokens only
