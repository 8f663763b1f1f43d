"""`make run`'s parallel `dvc repro` (pipelines/repro.py): the branches of the real dvc.yaml are disjoint,
in the DAG's order, and a plan whose branches would race is refused."""

from __future__ import annotations

import importlib.util

import pytest

from tests.foundation.import_closure import ROOT

_spec = importlib.util.spec_from_file_location("repro", ROOT / "pipelines" / "repro.py")
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)


@pytest.fixture(scope="module")
def real_dag():
    return repro.dag(ROOT)


def test_branches_of_the_default_pipeline_are_disjoint_and_ordered(real_dag):
    order, upstream = real_dag
    branches = repro.plan(order, upstream)
    assert list(branches) == list(repro.BRANCHES)
    weights, quantize = branches.values()
    assert weights[0] == "model@toy" and {"quantize_encoder@minilm-sentiment", "weights@lnfree-smollm2"} <= set(weights)
    assert {"quantize@smollm2", "circuits@smollm2-osplus-w8a8", "attribute@smollm2-rtn-w8a8"} <= set(quantize)
    assert "attribute@smollm2" in weights and "evaluate@smollm2" in quantize  # they read step 1 only: they balance the branches
    left = set(order) - set(weights) - set(quantize) - set(repro.FIRST)
    assert left == {"quant_interp", "aggregate"}  # they read both branches: the last, plain dvc repro
    for stages in branches.values():  # every stage after the stages it reads (--single-item keeps the order given)
        for i, stage in enumerate(stages):
            assert not upstream[stage] & set(stages[i:]), stage
            assert upstream[stage] <= set(stages[:i]) | set(repro.FIRST), stage
    assert all(not name.startswith("pipelines/") for name in order)  # the paper pipelines are not the default


def test_plan_refuses_a_stage_that_reads_another_branch(monkeypatch):
    order = ["prepare", "model@toy", "model@smollm2", "circuits@smollm2"]
    monkeypatch.setattr(repro, "FIRST", ("prepare",))
    upstream = {"prepare": set(), "model@toy": {"prepare"}, "model@smollm2": {"prepare"},
                "circuits@smollm2": {"prepare", "model@smollm2", "model@toy"}}
    monkeypatch.setattr(repro, "BRANCHES", {"toy": ["*toy*"], "smollm2": ["*smollm2*"]})
    with pytest.raises(ValueError, match=r"'circuits@smollm2' \(branch 'smollm2'\) reads the outputs of \['model@toy'\], which"):
        repro.plan(order, upstream)
    upstream["circuits@smollm2"].discard("model@toy")
    assert repro.plan(order, upstream) == {"toy": ["model@toy"], "smollm2": ["model@smollm2", "circuits@smollm2"]}


def test_plan_refuses_overlapping_or_empty_branches(monkeypatch):
    order = ["prepare", "model@toy", "model@smollm2"]
    monkeypatch.setattr(repro, "FIRST", ("prepare",))
    upstream = {"prepare": set(), "model@toy": {"prepare"}, "model@smollm2": {"prepare"}}
    monkeypatch.setattr(repro, "BRANCHES", {"a": ["model@*"], "b": ["*smollm2"]})
    with pytest.raises(ValueError, match="'model@smollm2' is in branch 'a' and in 'b'"):
        repro.plan(order, upstream)
    monkeypatch.setattr(repro, "BRANCHES", {"a": ["*toy"], "b": ["*pythia*"]})
    with pytest.raises(ValueError, match="branch 'b' matches no stage"):
        repro.plan(order, upstream)
    monkeypatch.setattr(repro, "BRANCHES", {"a": ["*toy", "prep*"]})
    with pytest.raises(ValueError, match="'prepare' runs before the branches: drop it from branch 'a'"):
        repro.plan(order, upstream)
