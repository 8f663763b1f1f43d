"""The report page: one self-contained ``index.html`` (no network at view time).

The headline figures are inlined as base64 PNG data URIs (downscaled to ``figure_width_px``), the
other figures as small thumbnails linking to their full-size copies in ``figures/<study>/``; styles
are inline and there is no script, so the page opens from a file, an e-mail attachment or a W&B
HTML panel alike (without its folder, only the thumbnails' links go nowhere). The header shows the git/DVC
revision of the results; the first screen lists the findings (one per study and model, with interval,
baseline and verdict); each study's headline table, key figures and collapsed full table follow, and the
model cards close the page, collapsed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping

from interpipe.headline import format_number
from interpipe.report.compare import KEYS, StudyTable
from interpipe.run_record import MAX_CHANGED_SHOWN
from interpipe.runtime import changed_source_files, git

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-top: 1rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; text-align: left; } td.key { text-align: left; }
td.best { background: #e3f5e1; font-weight: bold; }
.scroll { overflow-x: auto; } .muted { color: #777; font-size: .85rem; }
nav a { margin-right: 1rem; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; max-width: 440px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .75rem; color: #555; word-break: break-all; }
figure.key { max-width: 680px; } figure.thumb { max-width: 240px; } .headline table td { white-space: nowrap; }
.warn { color: #8a4b00; }
table.findings td { white-space: normal; max-width: 28rem; } td.verdict { font-weight: bold; white-space: nowrap; }
td.shows { background: #e3f5e1; } td.negative { background: #fdf3d8; } td.uninformative { background: #eee; color: #555; }
details > summary { cursor: pointer; color: #335; margin: .5rem 0; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p class="muted">git {{ revision.git_commit }}{% if revision.git_dirty %} (uncommitted changes to
{{ revision.get("git_changed_files", []) | join(", ") }}){% endif %}
{% if revision.git_branch %} on {{ revision.git_branch }}{% endif %}
&middot; dvc.lock {{ revision.dvc_lock or "absent" }}
{% if revision.dvc_exp_name %}&middot; experiment {{ revision.dvc_exp_name }}{% endif %}
&middot; {{ n_runs }} runs, {{ n_rows }} results</p>
{% if revision.get("changed_source_runs") %}<p class="warn">{{ revision.changed_source_runs | length }} of
{{ n_runs }} runs were made from source files that differed from their commit (their run.json: git_dirty,
git_changed_files): {{ revision.changed_source_runs | join(", ") }}</p>{% endif %}
<nav><a href="#findings">findings</a>{% for s in studies %}<a href="#{{ s.id }}">{{ s.name }}</a>{% endfor %}<a href="#models">models</a></nav>
</header>
<main>
<section id="findings">
<h2>Findings</h2>
{% if findings %}<p class="muted">One line per study and model: the study's headline number with its 95 % interval,
the floor or baseline it must beat, and what it shows. <b>shows the effect</b>: the interval is clear of the floor;
<b>valid negative</b>: the study could tell, and the method does not beat the floor; <b>uninformative</b>: the study
cannot tell here, for the reason given. Each verdict links to the study's key figure.</p>
<div class="scroll"><table class="findings">
<tr><th>study</th><th>model</th><th>what is measured</th><th>result [95 % interval]</th><th>floor / baseline</th><th>verdict</th><th>why</th></tr>
{% for f in findings %}<tr class="finding" data-verdict="{{ f.verdict }}"><td class="key"><a href="#{{ f.anchor }}">{{ f.stage }}</a></td>
<td class="key">{{ f.model }}</td><td class="key">{{ f.claim }}</td><td>{{ f.value_text }}</td><td class="key">{{ f.baseline_text }}</td>
<td class="key verdict {{ f.css }}">{% if f.figure %}<a href="{{ f.figure }}">{{ f.verdict }}</a>{% else %}{{ f.verdict }}{% endif %}</td>
<td class="key">{{ f.reason }}</td></tr>
{% endfor %}</table></div>{% else %}<p class="muted">No study wrote a headline yet.</p>{% endif %}
</section>
{% for s in studies %}
<section id="{{ s.id }}">
<h2>{{ s.name }}</h2>
{% if s.headline or s.key_tables %}<div class="headline" data-study="{{ s.name }}">
{% if s.headline %}<p class="muted">Headline: each number with its 95 % interval [low, high] and, in brackets, its baseline.</p>
<div class="scroll"><table>
<tr>{% for k in s.headline.columns %}<th>{{ k }}</th>{% endfor %}{% for m in s.headline.models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in s.headline.rows %}<tr>{% for k in row.labels %}<td class="key">{{ k }}</td>{% endfor %}
{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% endif %}
{% for t in s.key_tables %}<details><summary>{{ t.caption }} ({{ t.rows | length }} rows)</summary>
<div class="scroll"><table><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table></div></details>
{% endfor %}
{% if s.key_figures %}<div class="figures">
{% for f in s.key_figures %}<figure class="key"><img src="{{ f.uri }}" alt="{{ f.caption }}" width="{{ f.width }}" height="{{ f.height }}">
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}</div>{% endif %}
</div>{% endif %}
<details{% if not s.headline %} open{% endif %}><summary>All results: {{ s.n_rows }} rows, {{ s.figures | length }} figures (click a figure for full size)</summary>
<p class="muted">{{ s.n_rows }} rows &middot; best method per model, task and setting in green, for graded metrics
only (&darr; smaller is better: {{ s.lower | join(", ") or "none" }}); costs, interval bounds and baseline methods are never marked</p>
<div class="scroll"><table>
<tr>{% for k in keys %}<th>{{ k }}</th>{% endfor %}{% for m in s.metrics %}<th>{{ m }}{% if m in s.lower %} &darr;{% endif %}</th>{% endfor %}</tr>
{% for row in s.rows %}<tr>{% for k in row.labels %}<td class="key">{{ k }}</td>{% endfor %}
{% for cell in row.cells %}<td{% if cell.best %} class="best"{% endif %}>{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% if s.figures %}<div class="figures">
{% for f in s.figures %}<figure class="thumb">{% if f.href %}<a href="{{ f.href }}">{% endif %}<img src="{{ f.uri }}" alt="{{ f.caption }}">{% if f.href %}</a>{% endif %}
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}</div>{% if s.n_hidden %}<p class="muted">{{ s.n_hidden }} more figures in the output folders.</p>{% endif %}
{% endif %}
</details>
</section>
{% endfor %}
{% if not studies %}<p>No results yet: run <code>dvc repro</code>.</p>{% endif %}
<section id="models"><details><summary><b>Models</b> ({{ cards | length }} model cards)</summary>
{% if cards %}<div class="scroll"><table>
<tr>{% for c in card_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for card in cards %}<tr>{% for c in card_columns %}<td class="key">{{ card.get(c, "") }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% else %}<p class="muted">No model cards found.</p>{% endif %}
</details></section>
</main>
</body>
</html>
"""

CARD_COLUMNS = ["name", "source", "kind", "architecture", "revision", "n_params", "n_layers", "n_heads",
                "d_model", "d_vocab", "n_ctx", "dtype", "seconds"]


def revision_info(repo: str | Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Git commit/branch/dirty state, the hash of ``dvc.lock`` and the DVC experiment, if any.

    ``env`` is the process environment of a ``dvc exp run`` (``DVC_EXP_NAME``,
    ``DVC_EXP_BASELINE_REV``); pass ``os.environ`` from the stage.
    """
    repo = Path(repo)
    env = env or {}
    lock = repo / "dvc.lock"
    changed = changed_source_files(repo) or []
    return {
        "git_commit": git("rev-parse", "--short=12", "HEAD", cwd=repo) or "(no commit)",
        "git_branch": git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo) or "",
        "git_dirty": bool(changed), "git_changed_files": changed[:MAX_CHANGED_SHOWN],
        "dvc_lock": hashlib.sha256(lock.read_bytes()).hexdigest()[:12] if lock.exists() else "",
        "dvc_exp_name": env.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline": env.get("DVC_EXP_BASELINE_REV", ""),
    }


def model_cards(models_dir: str | Path) -> list[dict[str, Any]]:
    """The ``card.json`` of every model folder, without the long training curve."""
    cards = []
    for path in sorted(Path(models_dir).glob("*/card.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        card.pop("training_curve", None)
        card = {k: ("" if v is None else v) for k, v in card.items()}
        if isinstance(card.get("seconds"), float):
            card["seconds"] = round(card["seconds"], 1)
        if isinstance(card.get("n_params"), int):
            card["n_params"] = f"{card['n_params']:,}"
        cards.append(card)
    return cards


def shrink_png(path: str | Path, width: int) -> tuple[bytes, int, int]:
    """The PNG at ``path``, downscaled to at most ``width`` pixels wide: ``(bytes, w, h)``."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.width > width:
            image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), image.width, image.height


def _table(table: dict) -> dict:
    """A small CSV as text cells (numbers to 3 significant digits, empty for missing)."""
    frame = table["frame"]
    rows = [[format_number(v) if isinstance(v, float) else str(v) for v in row]
            for row in frame.itertuples(index=False, name=None)]
    return {"caption": table["caption"], "columns": list(frame.columns), "rows": rows}


def _inline(figure: dict, study: str, thumbnail: bool = False) -> dict:
    """A figure for the template: its data URI (the thumbnail for figures outside the headline)
    and the relative link to its full-size copy under ``figures/<study>/``."""
    png = figure.get("thumbnail", figure["png"]) if thumbnail else figure["png"]
    return {**figure, "uri": "data:image/png;base64," + base64.b64encode(png).decode(),
            "href": f"figures/{study}/{figure['file']}" if figure.get("file") else ""}


def _anchor(name: str) -> str:
    return "study-" + "".join(ch if ch.isalnum() else "-" for ch in name)


HEADLINE_KEYS = ["stage", "task", "method", "metric", "setting"]


def headline_block(frame: Any) -> dict | None:
    """The headline table of one study: a row per quoted number, a column per model."""
    from interpipe.headline import format_value

    if frame is None or not len(frame):
        return None
    models = list(dict.fromkeys(frame["model"]))
    keys = [k for k in HEADLINE_KEYS if k in frame and frame[k].astype(str).str.len().any()]
    rows = []
    for labels, group in frame.groupby(keys, sort=False):
        labels = labels if isinstance(labels, tuple) else (labels,)
        cells = []
        for model in models:
            hit = group[group["model"] == model]
            if not len(hit):
                cells.append("")
                continue
            r = hit.iloc[-1]
            text = format_value(float(r["value"]), float(r["ci_low"]), float(r["ci_high"]))
            base = r["baseline_value"]
            if r["baseline"] or base == base:
                text += f" ({r['baseline']}{': ' if r['baseline'] and base == base else ''}"
                text += f"{format_value(float(base), float('nan'), float('nan')) if base == base else ''})"
            cells.append(text)
        rows.append({"labels": list(labels), "cells": cells})
    return {"columns": keys, "models": models, "rows": rows}


def render_page(title: str, revision: dict, cards: list[dict], tables: dict[str, StudyTable],
                figures: dict[str, list[dict]], n_hidden: dict[str, int], n_runs: int, n_rows: int,
                order: list[str] | tuple[str, ...] = (), headlines: dict[str, Any] | None = None,
                key_tables: dict[str, list[dict]] | None = None, findings: list | None = None) -> str:
    """Render the page, studies in ``order`` first, then alphabetically.

    ``figures[study]`` holds dicts with ``caption``, ``png`` bytes, ``width`` and ``height`` (and
    ``headline``: a study's key figure, shown beside its headline table); ``headlines[study]`` the
    study's headline rows (:mod:`interpipe.headline`); ``findings`` (:mod:`interpipe.report.findings`)
    open the page.
    """
    import jinja2

    headlines, key_tables = headlines or {}, key_tables or {}
    studies = []
    names = set(tables) | set(figures) | set(headlines)
    for name in sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)):
        table = tables.get(name)
        rows = []
        if table is not None:
            for i in table.frame.index:
                rows.append({
                    "labels": [table.frame.at[i, k] for k in KEYS],
                    "cells": [{"text": format_number(table.frame.at[i, m]), "best": bool(table.best.at[i, m])}
                              for m in table.metrics],
                })
        studies.append({
            "id": _anchor(name), "name": name, "rows": rows,
            "metrics": table.metrics if table else [],
            "lower": [m for m, low in (table.lower if table else {}).items() if low],
            "n_rows": len(table.frame) if table else 0,
            "headline": headline_block(headlines.get(name)),
            "key_tables": [_table(t) for t in key_tables.get(name, [])],
            "key_figures": [_inline(f, name) for f in figures.get(name, []) if f.get("headline")],
            "figures": [_inline(f, name, thumbnail=True) for f in figures.get(name, []) if not f.get("headline")],
            "n_hidden": n_hidden.get(name, 0),
        })
    card_columns = [c for c in CARD_COLUMNS if any(c in card for card in cards)]
    css = {"shows the effect": "shows", "valid negative": "negative", "uninformative": "uninformative"}
    shown = [{"stage": f.stage, "model": f.model, "claim": f.claim, "value_text": f.value_text,
              "baseline_text": f.baseline_text, "verdict": f.verdict, "reason": f.reason, "figure": f.figure,
              "anchor": _anchor(f.study), "css": css.get(f.verdict, "")} for f in findings or []]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True)
    return env.from_string(TEMPLATE).render(
        title=title, revision=revision, cards=cards, card_columns=card_columns, studies=studies,
        keys=KEYS, n_runs=n_runs, n_rows=n_rows, findings=shown,
    )
