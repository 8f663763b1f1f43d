"""Quoted numbers: every block of README.md and docs/ equals its rendering from the committed snapshot,
no interval is typed outside a block, the README stays a front door, and the block machinery itself
catches a stale block and fixes it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from interpipe.report.quote import (QuoteError, find_blocks, load_snapshot, markdown_files, render, stale_blocks,
                                    typed_intervals, write_blocks)
from interpipe.report.snapshot import EVALUATE, FINDINGS, HEADLINE, TIMINGS, write_snapshot

ROOT = Path(__file__).resolve().parents[2]
DOCS = markdown_files(["README.md", "docs"], ROOT)


def test_every_quoted_block_equals_the_committed_snapshot():
    snapshot = load_snapshot(ROOT / "results")
    assert sum(len(find_blocks(p)) for p in DOCS) >= 6  # README's findings and timings, the study pages' tables
    assert stale_blocks(DOCS, snapshot) == [], "run `python -m interpipe.report.quote --write` after the snapshot"


def test_no_interval_is_typed_outside_a_block():
    typed = {str(p.relative_to(ROOT)): typed_intervals(p) for p in DOCS}
    assert {k: v for k, v in typed.items() if v} == {}


def test_readme_is_a_front_door_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for path in DOCS:
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / link).exists(), f"{path.name} links to {link}, which does not exist"


@pytest.fixture
def snapshot():
    findings = pd.DataFrame([{"study": "circuits", "stage": "circuits", "model": "toy", "task": "ioi",
                              "claim": "faithfulness", "metric": "faithfulness", "value": 0.9, "ci_low": 0.8,
                              "ci_high": 1.0, "baseline": "random", "baseline_value": 0.1,
                              "verdict": "shows the effect", "reason": "above random", "figure": "",
                              "value_text": "0.9 [0.8, 1]", "baseline_text": "random: 0.1"}])
    headline = pd.DataFrame([
        {"study": "quantization", "stage": "quantize", "model": "toy", "task": "corpus", "method": "rtn-w8a8",
         "metric": "loss_delta", "value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "baseline": "fp", "baseline_value": 0.0,
         "quant_method": "rtn", "bits": "w8a8", "minus_baseline": 0.5, "minus_baseline_ci_low": 0.25,
         "minus_baseline_ci_high": 0.75},
        {"study": "quantization", "stage": "quantize", "model": "toy", "task": "corpus", "method": "osplus-w8a8",
         "metric": "loss_delta", "value": 0.25, "ci_low": 0.125, "ci_high": 0.375, "baseline": "rtn",
         "baseline_value": 0.5, "quant_method": "osplus", "bits": "w8a8", "minus_baseline": -0.25,
         "minus_baseline_ci_low": -0.375, "minus_baseline_ci_high": -0.125}])
    timings = pd.DataFrame([{"folder": "models/toy", "stage": "model", "model": "toy", "wall_seconds": 200.0,
                             "cpu_seconds": 190.0, "peak_memory_mb": 900.0},
                            {"folder": "circuits/toy", "stage": "circuits", "model": "toy", "wall_seconds": 20.0,
                             "cpu_seconds": 18.0, "peak_memory_mb": 800.0}])
    evaluate = pd.DataFrame([{"model": "toy", "task": "ioi", "metric": "accuracy", "value": 1.0}])
    return {FINDINGS: findings, HEADLINE: headline, TIMINGS: timings, EVALUATE: evaluate}


def test_rendered_blocks_carry_the_numbers_with_their_intervals(snapshot):
    table = render("headline stage=quantize metric=loss_delta columns=bits,quant_method extra=minus_baseline", snapshot)
    assert "| w8a8 | osplus | 0.25 [0.125, 0.375] | rtn: 0.5 | -0.25 [-0.375, -0.125] |" in table
    assert "| circuits | toy | faithfulness | 0.9 [0.8, 1] | random: 0.1 | **shows the effect** | above random |" \
        in render("findings", snapshot)
    timings = render("timings top=1", snapshot)
    assert "| all 2 stage executions | 220 | 208 |" in timings and "models/toy" in timings and "circuits/toy" not in timings


@pytest.mark.parametrize("spec, message", [
    ("tables", "unknown quote kind"), ("headline metric=nothing", "matches no row"),
    ("headline colour=red", "no column 'colour'"), ("headline stage", "not key=value")])
def test_a_bad_directive_names_the_problem(snapshot, spec, message):
    with pytest.raises(QuoteError, match=message):
        render(spec, snapshot)


def test_a_stale_block_is_found_and_rewritten(snapshot, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Prose.\n\n<!-- quote headline quant_method=osplus -->\n| typed | by hand |\n<!-- /quote -->\n\n"
                    "Typed: 0.25 [0.125, 0.375].\n")
    assert stale_blocks([page], snapshot) == [f"{page}: quote headline quant_method=osplus"]
    assert typed_intervals(page) == ["0.25 [0.125, 0.375]"]
    assert write_blocks(page, snapshot)
    assert stale_blocks([page], snapshot) == [] and "0.25 [0.125, 0.375] | rtn: 0.5" in page.read_text()
    assert page.read_text().startswith("Prose.") and not write_blocks(page, snapshot)  # the second write changes nothing


def test_snapshot_from_a_pipelines_outputs(tmp_path):
    from tests.report.synthetic import make_repo
    from interpipe.report import ReportSettings, run_aggregate

    root = make_repo(tmp_path / "repo")
    run_aggregate(ReportSettings(), out_dir=root / "outputs" / "report", repo=root, env={})
    written = write_snapshot(root / "outputs", tmp_path / "results")
    assert sorted(p.name for p in written) == sorted([FINDINGS, HEADLINE, TIMINGS, EVALUATE])
    loaded = load_snapshot(tmp_path / "results")
    assert loaded[FINDINGS]["verdict"].tolist() == ["shows the effect"]
    assert "0.4 [0.1, 0.7]" in render("findings", loaded)
    assert set(loaded[HEADLINE]["study"]) == {"attribution"}
