"""The one answer-token rule of every study (interpipe.models.tokens.answer_token_id)."""

import pytest

from interpipe.models.tokens import answer_token_id


class SplitTok:
    """Encodes each character of a word after its leading space as its own id (ord)."""

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens and text.startswith(" ")  # the leading space, no BOS
        return [ord(c) for c in text[1:]]


def test_single_token_answer():
    assert answer_token_id(SplitTok(), "A") == ord("A")


def test_multi_token_answer_is_refused_naming_it():
    with pytest.raises(ValueError, match="answer 'Emma' is 4 tokens"):
        answer_token_id(SplitTok(), "Emma")


def test_first_of_many_takes_the_first_token():
    assert answer_token_id(SplitTok(), "Emma", first_of_many=True) == ord("E")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_equals_the_tokenizers_own_and_leaves_it_unchanged(side):
    from transformers import AutoTokenizer

    from interpipe.models import minilm_folder
    from interpipe.models.tokens import encode_prompts

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    before = (tok.pad_token, tok.padding_side)
    prompts = ["a short one", "a much longer prompt than the first one", "mid length text"]
    ids, mask, last = encode_prompts(tok, prompts, None, padding_side=side)
    assert (tok.pad_token, tok.padding_side) == before  # the caller's tokenizer is not changed
    reference = AutoTokenizer.from_pretrained(minilm_folder(), padding_side=side)
    enc = reference(prompts, padding=True, return_tensors="pt")
    assert ids.tolist() == enc["input_ids"].tolist() and mask.tolist() == enc["attention_mask"].tolist()
    assert last.tolist() == ([int(n) - 1 for n in enc["attention_mask"].sum(1)] if side == "right" else [ids.shape[1] - 1] * 3)
