"""The test session checks the library's annotations at call time (tests/conftest.py, tests/typecheck.py):
a call whose tensor shapes contradict them fails, and a call that matches them runs."""

from __future__ import annotations

import jaxtyping
import pytest
import torch


def test_a_call_against_its_shape_annotations_fails():
    from interpipe.circuits.engine import readout

    resid = torch.zeros(4, 3, 8)  # (rows, pos, d_model)
    with pytest.raises(jaxtyping.TypeCheckError, match="answer_pos"):
        readout(None, resid, torch.zeros(2, 2, dtype=torch.long))  # answer_pos must be (batch,), not 2-D


def test_a_call_that_matches_its_annotations_runs():
    from interpipe.circuits.ablation import aligned_means

    ref = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])  # (ref, ref_pos)
    assert aligned_means(ref, ["a", "a", "b"], ["b", "a"], 2).tolist() == [[10.0, 20.0], [2.0, 3.0]]
