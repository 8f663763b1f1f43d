"""Hook-name checks on a TransformerBridge: nothing stored on the bridge, the caller's name set reused."""

from __future__ import annotations

import pytest

from interpipe.circuits.bridge import check_hook, hook_names


def test_check_hook_stores_nothing_on_the_bridge(bridge):
    before = set(vars(bridge))
    assert check_hook(bridge, "blocks.0.attn.hook_z") == "blocks.0.attn.hook_z"
    assert set(vars(bridge)) == before  # no cached attribute planted on the library object
    assert not [k for k in vars(bridge) if "interpipe" in k]


def test_hook_names_are_the_bridge_hook_dict(bridge):
    names = hook_names(bridge)
    assert names == frozenset(bridge.hook_dict)
    assert {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"} <= names


def test_check_hook_with_the_callers_names(bridge):
    names = hook_names(bridge)
    assert check_hook(bridge, "blocks.1.hook_resid_pre", hooks=names) == "blocks.1.hook_resid_pre"
    with pytest.raises(ValueError, match="did you mean"):
        check_hook(bridge, "blocks.1.hook_resid_pree", hooks=names)
    with pytest.raises(ValueError, match="unknown hook"):  # the given set is what is checked against
        check_hook(bridge, "blocks.1.hook_resid_pre", hooks=frozenset())
    with pytest.raises(ValueError, match="after the last block"):
        check_hook(bridge, "ln_final.hook_normalized", hooks=names)
    assert check_hook(bridge, "ln_final.hook_normalized", patchable=False, hooks=names)


def test_answer_ids_follow_the_one_answer_rule(bridge):
    """Answer and foil ids are ``models.tokens.answer_token_id``'s: a word of several tokens is refused
    (or its prompt skipped), never cut to its first token."""
    from interpipe.circuits import make_batch
    from interpipe.models.tokens import answer_token_id

    clean, corrupted = ["The cats near the car", "The cat near the car"], ["The cat near the car", "The cats near the car"]
    batch = make_batch(bridge, clean, corrupted, ["are", "is"], ["is", "are"])
    assert batch.answer_ids.tolist() == [answer_token_id(bridge.tokenizer, w) for w in ("are", "is")]
    assert batch.foil_ids.tolist() == [answer_token_id(bridge.tokenizer, w) for w in ("is", "are")]
    with pytest.raises(ValueError, match="'are is' is 2 tokens"):  # the word-level tokenizer: two words, two tokens
        make_batch(bridge, clean, corrupted, ["are is", "is"], ["is", "are"])
    batch = make_batch(bridge, clean, corrupted, ["are is", "is"], ["is", "are"], on_mismatch="skip")
    assert batch.size == 1 and batch.skipped == 1 and batch.prompts == ["The cat near the car"]
