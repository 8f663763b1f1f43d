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
