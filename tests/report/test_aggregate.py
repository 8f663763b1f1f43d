"""The report folder: tables with the best marked, a self-contained page, metrics for DVC."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest

from interpipe.report import ReportSettings, collect, run_aggregate
from interpipe.report.compare import lower_is_better
from tests.report.synthetic import make_repo


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("repo"))
    out = root / "outputs" / "report"
    metrics = run_aggregate(ReportSettings(), out_dir=out, repo=root, env={"DVC_EXP_NAME": "bits4"})
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def test_files(report_dir):
    for name in ["results.csv", "results.parquet", "index.html", "tables/attribution.csv",
                 "tables/quantization.csv", "plots/attribution.csv", "plots/circuits.csv"]:
        assert (report_dir / name).is_file(), name
    csv = pd.read_csv(report_dir / "results.csv", keep_default_na=False)
    parquet = pd.read_parquet(report_dir / "results.parquet")
    assert len(csv) == len(parquet) == 18
    assert csv["value"].tolist() == parquet["value"].tolist()


def test_comparison_table_marks_the_best(report_dir):
    table = pd.read_csv(report_dir / "tables" / "attribution.csv", keep_default_na=False)
    rows = {(r.method, r.setting): r for r in table.itertuples()}
    # methods compete within one setting: comprehensiveness larger wins, sufficiency smaller wins
    assert rows[("ig", "")].best == "comprehensiveness"
    assert rows[("saliency", "")].best == "sufficiency"
    assert rows[("ig", "attribute.steps=8")].best == ""  # alone in its setting
    quant = pd.read_csv(report_dir / "tables" / "quantization.csv", keep_default_na=False)
    best = {(r.task, r.method): r.best for r in quant.itertuples()}
    assert best == {("", "os_plus"): "sqnr_db", ("", "rtn"): "", ("sentiment", "os_plus"): "accuracy",
                    ("sentiment", "rtn"): ""}


def test_metric_directions():
    s = ReportSettings()
    assert [lower_is_better(m, s) for m in ["ce_loss", "sufficiency", "accuracy", "sqnr_db",
                                            "comprehensiveness", "logit_diff"]] == [True] * 2 + [False] * 4
    # costs, interval bounds and names of no declared direction are never ranked
    assert [s.direction(m) for m in ["stage_seconds", "examples_per_second", "faithfulness_ci_low",
                                     "ioi/accuracy_ci_high", "n_components_seen", "ioi/faithfulness"]] == \
        [None, None, None, None, None, "higher"]


def test_baselines_costs_and_empty_rows_are_not_marked():
    from interpipe.report.compare import study_tables

    def row(method, metric, value):
        return dict(study="s", stage="x", model="m", method=method, task="t", setting="", metric=metric,
                    value=value, run_dir=method, config_hash="")

    rows = [row("random", "comprehensiveness", 0.9), row("ig", "comprehensiveness", 0.7),
            row("saliency", "comprehensiveness", 0.5), row("random", "seconds", 0.1), row("ig", "seconds", 9.0),
            row("saliency", "seconds", 1.0), row("empty", "comprehensiveness", float("nan"))]
    table = study_tables(pd.DataFrame(rows), ReportSettings())["s"]
    best = dict(zip(table.frame["method"], table.frame["best"]))
    assert best == {"ig": "comprehensiveness", "random": "", "saliency": ""}  # no row for "empty"


def test_metrics_json(report_dir):
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["n_runs"] == 10 and metrics["n_rows"] == 18 and metrics["n_studies"] == 4
    assert metrics["attribution/best/comprehensiveness"] == 0.75
    assert metrics["attribution/best/sufficiency"] == 0.2
    assert metrics["n_figures"] == 4


def test_plot_data_for_dvc(report_dir):
    plot = pd.read_csv(report_dir / "plots" / "attribution.csv", keep_default_na=False)
    assert list(plot.columns) == ["run", "metric", "value"]
    assert set(plot["metric"]) == {"comprehensiveness"}  # the metric most runs report
    assert "toy/ioi/ig/attribute.steps=8" in set(plot["run"])


def test_page_is_self_contained(report_dir):
    html = (report_dir / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not load anything remotely"
    assert "<script" not in html
    images = re.findall(r'<img src="data:image/png;base64,', html)
    assert len(images) == 4  # three figures and the headline figure
    links = re.findall(r'<a href="(figures/[^"]+\.png)">', html)
    # every figure outside the headline links to its full-size copy, and the finding to its key figure
    assert len(links) == 4 and links[0].endswith("headline_faithfulness.png")
    for link in links:
        assert (report_dir / link).is_file(), link
    for heading in ["Findings", "attribution", "quantization", "weights", "foundation"]:
        assert f">{heading}</h2>" in html
    assert "<b>Models</b>" in html  # the model cards close the page, collapsed
    assert "causal_lm" in html and "experiment bits4" in html  # model card and DVC experiment in the header
    assert 'class="best"' in html


def test_key_figures_first_and_downscaled(tmp_path):
    from PIL import Image

    root = make_repo(tmp_path)
    settings = ReportSettings(max_figures_per_study=2, figure_width_px=300)
    report = collect(settings, root, progress=False)
    key, figure = report.figures["attribution"]
    assert key["caption"] == "outputs/attribute/toy/headline_faithfulness.png" and key["headline"]  # the study's own
    assert figure["caption"] == "outputs/attribute/toy/saliency/heatmap.png"  # "heatmap" ranks before "curve"
    assert Image.open(io.BytesIO(figure["png"])).size == (300, 75)
    assert Image.open(io.BytesIO(figure["thumbnail"])).size == (220, 55)  # what the page inlines
    assert key["thumbnail"] == key["png"]  # headline figures are inlined at full width
    assert report.n_hidden["attribution"] == 1


def test_headline_rows_and_dvc_metrics(tmp_path):
    from interpipe.headline import headline_metrics, read_headline

    root = make_repo(tmp_path)
    report = collect(ReportSettings(), root, progress=False)
    frame = report.headlines["attribution"]
    assert list(frame[["method", "metric", "value"]].itertuples(index=False, name=None)) == [
        ("normxlogit", "normalised_comprehensiveness_k", 0.4), ("normxlogit", "speedup_vs_ig", 40.0),
        ("oracle", "informative", 1.0), ("ig", "comprehensiveness", 0.7), ("saliency", "comprehensiveness", 0.5)]
    assert set(frame["run_dir"]) == {"outputs/attribute/toy"} and set(frame["stage"]) == {"attribute"}
    flat = headline_metrics(read_headline(root / "outputs" / "attribute" / "toy" / "headline.csv"))
    assert flat == {"ioi/ig/comprehensiveness": 0.7, "ioi/ig/comprehensiveness_ci_low": 0.6,
                    "ioi/ig/comprehensiveness_ci_high": 0.8, "ioi/ig/comprehensiveness_baseline": 0.2,
                    "ioi/saliency/comprehensiveness": 0.5, "ioi/saliency/comprehensiveness_ci_low": 0.4,
                    "ioi/saliency/comprehensiveness_ci_high": 0.55, "ioi/saliency/comprehensiveness_baseline": 0.2,
                    "all/normxlogit/speedup_vs_ig": 40.0, "all/normxlogit/speedup_vs_ig_baseline": 1.0,
                    "all/oracle/informative": 1.0, "all/normxlogit/normalised_comprehensiveness_k": 0.4,
                    "all/normxlogit/normalised_comprehensiveness_k_ci_low": 0.1,
                    "all/normxlogit/normalised_comprehensiveness_k_ci_high": 0.7,
                    "all/normxlogit/normalised_comprehensiveness_k_baseline": 0.0}
    report.save(tmp_path / "out", ReportSettings())
    html = (tmp_path / "out" / "index.html").read_text()
    assert "0.7 [0.6, 0.8] (random: 0.2)" in html and "40 (integrated_gradients: 1)" in html
    assert (tmp_path / "out" / "headline" / "attribution.csv").is_file()  # W&B logs it as a Table
    findings = pd.read_csv(tmp_path / "out" / "findings.csv")
    assert findings[["stage", "model", "verdict", "value_text"]].values.tolist() == [
        ["attribute", "toy", "shows the effect", "0.4 [0.1, 0.7]"]]
    assert "outputs/attribute/toy/operators.csv (2 rows)" in html and "<td>0.712</td>" in html


def test_terminal_summary(report_dir):
    from rich.console import Console

    from interpipe.report.summary import print_summary

    console = Console(record=True, width=60)  # a narrow terminal: lines wrap, nothing is cut
    assert print_summary(report_dir, console=console) == 0
    text = console.export_text()
    assert "index.html" in "".join(text.split()) and "attribution" in text
    flat = " ".join(text.split())
    assert "attribute · toy — shows the effect" in flat
    assert "normxlogit: comprehensiveness, normalised (random floor 0, oracle 1): 0.4 [0.1, 0.7]" in flat
    assert "…" not in text


def test_empty_repo(tmp_path):
    metrics = run_aggregate(ReportSettings(), out_dir=tmp_path / "report", repo=tmp_path, env={})
    assert metrics["n_runs"] == 0
    assert "No results yet" in (tmp_path / "report" / "index.html").read_text()


def test_load_reads_the_saved_results(report_dir):
    from interpipe.report import Report

    loaded = Report.load(report_dir)
    assert len(loaded.to_frame()) == 18
    assert loaded.info["metrics"]["n_runs"] == 10
    with pytest.raises(FileNotFoundError, match="stages.aggregate"):
        Report.load(report_dir / "nowhere")
