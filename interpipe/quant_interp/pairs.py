"""Pairs across the survival frontier: per method, the setting that still solves the task and the one below.

The quantize stage's ``frontier.csv`` (:mod:`interpipe.quant.frontier`) names, per model x method x series x
task, the *frontier* (the last setting, from the most bits down, whose pairwise-accuracy interval lies above
chance) and the setting one step below it (the first that does not). :func:`select` turns it into quant_interp
pairs on both sides of each method's frontier:

- ``above``: the frontier's setting, where the quantized model still solves the task, so the study measures
  what of the FP mechanism survives the last quantization the behaviour survives;
- ``below``: the first setting that no longer solves it, so the study shows what breaks where the behaviour
  breaks (its mechanism numbers are undefined by the study's own rule; what stays is the pairwise accuracy,
  the logit difference retained and, from the saved runs, which heads kept their class).

A method whose frontier is not inside the grid has no pair on the missing side, with the reason: one that
solves the task at every setting has no ``below``, one that solves it at none has no ``above`` (its
``below`` is the setting with the most bits). Where the FP model itself does not solve the task there is
no frontier and no pair. Quantized models are named as the quantize stage exports them,
``<model>-<method>-<bits>`` (``quantize.export=[<method>-<bits>]``): ``smollm2-quarot-w6a6`` for the
rotated QuaRot setting.

>>> import pandas as pd
>>> table = pd.DataFrame([
...     {"model": "toy", "method": "rtn", "series": "weights+activations", "task": "ioi",
...      "frontier_bits": "w6a6", "below_bits": "w4a4", "settings": "w8a8 w6a6 w4a4", "note": ""},
...     {"model": "toy", "method": "osplus", "series": "weights+activations", "task": "ioi",
...      "frontier_bits": "w4a4", "below_bits": "", "settings": "w8a8 w6a6 w4a4", "note": ""}])
>>> [(p["quantized"], p["side"]) for p in pairs(select(table))]
[('toy-rtn-w6a6', 'above'), ('toy-rtn-w4a4', 'below'), ('toy-osplus-w4a4', 'above')]
>>> select(table).loc[3, "reason"]
'solved at every setting of the series (fewest bits: w4a4): no setting below the frontier in the grid'

Run it on a frontier table (printing the pairs, the quantize exports and the Hydra overrides), or write the
``quant_interp=frontier`` preset::

    python -m interpipe.quant_interp.pairs outputs/quantize/smollm2/frontier.csv
    python -m interpipe.quant_interp.pairs outputs/quantize/*/frontier.csv --write conf/quant_interp/frontier.yaml
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from interpipe.quant.frontier import ordered
from interpipe.quant_interp.basis import rotated as is_rotated

SIDES = ("above", "below")  # above: the frontier (last setting that solves); below: the first that does not
SERIES = "weights+activations"  # the joint series: w8a8 > w6a6 > w4a8 > w4a4
TASK = "ioi"  # the task quant_interp compares circuits on
COLUMNS = ["fp", "method", "series", "task", "side", "bits", "quantized", "rotated", "pairwise_acc",
           "pairwise_acc_ci_low", "pairwise_acc_ci_high", "reason", "note"]
TEXT = ("model", "method", "series", "task", "frontier_bits", "below_bits", "settings", "note")


def read_frontier(path: str | Path) -> pd.DataFrame:
    """A ``frontier.csv`` with its empty text cells as ``""`` (pandas reads them as NaN)."""
    table = pd.read_csv(path)
    for column in TEXT:
        if column in table:
            table[column] = table[column].astype(object).fillna("").astype(str)
    return table


def quantized_name(model: str, method: str, bits: str) -> str:
    """The exported model's folder name: ``<model>-<method>-<bits>`` (``quantize.export=[<method>-<bits>]``)."""
    return f"{model}-{method}-{bits}"


def _accuracy(row: pd.Series, prefix: str) -> dict[str, float]:
    return {f"pairwise_acc{s}": float(row.get(f"{prefix}pairwise_acc{s}", float("nan")))
            for s in ("", "_ci_low", "_ci_high")}


def _fp_unsolved(row: pd.Series) -> bool:
    """The FP model's own pairwise-accuracy interval is not above chance (then no frontier means anything)."""
    low, chance = row.get("fp_pairwise_acc_ci_low"), row.get("chance")
    if low is None or chance is None or pd.isna(low):
        return "the FP model does not solve" in str(row.get("note", ""))
    return not float(low) > float(chance)


def _missing_reason(row: pd.Series, side: str) -> str:
    tags = str(row["settings"]).split()
    if side == "above":
        return f"solved at no setting of the series (most bits: {tags[0] if tags else '?'}): no frontier in the grid"
    return (f"solved at every setting of the series (fewest bits: {tags[-1] if tags else '?'}): "
            "no setting below the frontier in the grid")


def _side_rows(row: pd.Series) -> list[dict]:
    """The ``above`` and ``below`` rows of one method's frontier row."""
    base = {"fp": row["model"], "method": row["method"], "series": row["series"], "task": row["task"],
            "rotated": is_rotated(row["method"])}
    fp_unsolved = _fp_unsolved(row)
    out = []
    for side, column, prefix in (("above", "frontier_bits", ""), ("below", "below_bits", "below_")):
        bits = "" if fp_unsolved else str(row[column])
        if fp_unsolved:
            reason = f"the FP model does not solve {row['task']}: no frontier"
        else:
            reason = "" if bits else _missing_reason(row, side)
        accuracy = {k: (v if bits else float("nan")) for k, v in _accuracy(row, prefix).items()}
        out.append({**base, "side": side, "bits": bits,
                    "quantized": quantized_name(row["model"], row["method"], bits) if bits else "",
                    **accuracy, "reason": reason, "note": _solved_again(row)})
    return out


def _solved_again(row: pd.Series) -> str:
    """A non-monotone series: the part of the table's note naming the settings below the frontier that solve
    the task again (the frontier stays the first break going down)."""
    parts = [p for p in str(row.get("note", "")).split("; ") if p.startswith("solved again below the frontier")]
    return parts[0] if parts else ""


def select(frontier: pd.DataFrame, task: str = TASK, series: str = SERIES, methods: list[str] | None = None
           ) -> pd.DataFrame:
    """One row per model x method x side (:data:`SIDES`) of ``frontier``'s ``task`` and ``series``: the setting
    (``bits``, empty when the frontier is not inside the grid on that side), its exported model's name, its
    pairwise accuracy with interval, whether the method rotates the residual basis, and ``reason`` (why a side
    has no setting) and ``note`` (a non-monotone series: the settings below the frontier that solve it again)."""
    chosen = frontier[(frontier["task"] == task) & (frontier["series"] == series)]
    if methods:
        chosen = chosen[chosen["method"].isin(methods)]
    rows = [r for _, row in chosen.iterrows() for r in _side_rows(row)]
    return pd.DataFrame(rows, columns=COLUMNS)


def pairs(selection: pd.DataFrame) -> list[dict]:
    """The quant_interp pairs of a :func:`select` table: ``{fp, quantized, method, bits, side}`` each, for the
    sides with a setting."""
    return [{"fp": r.fp, "quantized": r.quantized, "method": r.method, "bits": r.bits, "side": r.side}
            for r in selection.itertuples(index=False) if r.bits]


def exports(selection: pd.DataFrame) -> dict[str, list[str]]:
    """Per FP model, the ``quantize.export`` entries (``<method>-<bits>``) its pairs need, in table order."""
    out: dict[str, list[str]] = {}
    for p in pairs(selection):
        entry = f"{p['method']}-{p['bits']}"
        if entry not in out.setdefault(p["fp"], []):
            out[p["fp"]].append(entry)
    return out


def _inline(values: list[str]) -> str:
    return "[" + ",".join(values) + "]"


def quantize_overrides(selection: pd.DataFrame) -> dict[str, str]:
    """Per FP model, the quantize stage's overrides that export every model of its pairs
    (``quantize.methods``, ``quantize.bits`` and ``quantize.export``: an export must be a setting the run measures)."""
    out = {}
    for fp, entries in exports(selection).items():
        methods = list(dict.fromkeys(e.rsplit("-", 1)[0] for e in entries))
        bits = ordered(dict.fromkeys(e.rsplit("-", 1)[1] for e in entries))
        out[fp] = (f"'quantize.methods={_inline(methods)}' 'quantize.bits={_inline(bits)}' "
                   f"'quantize.export={_inline(entries)}'")
    return out


def pairs_override(selection: pd.DataFrame, attribution: bool = False) -> str:
    """The ``quant_interp.pairs`` Hydra override of the selection (method, bits and side are read back from
    each export's card by the study, so the pair needs only its two model names)."""
    items = [f"{{fp: {p['fp']}, quantized: {p['quantized']}, attribution: {str(attribution).lower()}}}"
             for p in pairs(selection)]
    return f"'quant_interp.pairs=[{', '.join(items)}]'"


def _comment(row) -> str:
    acc = (f"pairwise accuracy {row.pairwise_acc:.3g}, interval low {row.pairwise_acc_ci_low:.3g}"
           if pd.notna(row.pairwise_acc) else "pairwise accuracy not in the table")
    rotated = "; rotated residual basis (docs/quant_interp.md)" if row.rotated else ""
    return f"{row.side}: {row.method} {row.bits}, {acc}{rotated}"


def preset(selection: pd.DataFrame, command: str, attribution: bool = False) -> str:
    """The text of a ``conf/quant_interp/<name>.yaml`` preset holding the selection's pairs, with ``command`` (the
    one that wrote it), the commands that make the pairs' inputs and, as comments, the sides without a setting."""
    if not pairs(selection):
        raise ValueError("no method of the frontier table has a setting on either side: nothing to compare")
    lines = ["# Pairs across the survival frontier (docs/quant_interp.md, 'Pairs across the frontier'), written by",
             f"#   {command}",
             "# above: the last setting of each method that still solves the task (what of the mechanism survives);",
             "# below: the first that does not (what breaks where the behaviour breaks; its mechanism numbers are",
             "# undefined by the study's rule). Each pair needs the export and its circuits run:"]
    for fp, overrides in quantize_overrides(selection).items():
        lines.append(f"#   python -m stages.quantize model={fp} quantize=<the preset of the frontier's run> \\")
        lines.append(f"#       {overrides} \\")
        lines.append(f"#       hydra.run.dir=outputs/quantize/{fp}-frontier")
    lines.append("#   python -m stages.circuits model=hub model.name=<quantized> model.source=outputs/models/<quantized> \\")
    lines.append("#       circuits=<fp>_quantized hydra.run.dir=outputs/circuits/<quantized>    # each quantized model below")
    lines.append("#   python -m stages.quant_interp quant_interp=frontier hydra.run.dir=outputs/quant_interp_frontier")
    missing = selection[selection["bits"] == ""]
    if len(missing):
        lines.append("# Sides without a setting:")
        lines += [f"#   {r.fp} {r.method} {r.side}: {r.reason}" for r in missing.itertuples(index=False)]
    lines += ["defaults:", "  - default", "  - _self_", "pairs:"]
    flag = "" if attribution else ", attribution: false"
    for row in selection[selection["bits"] != ""].itertuples(index=False):
        lines.append(f"  - {{fp: {row.fp}, quantized: {row.quantized}{flag}}}  # {_comment(row)}")
    return "\n".join(lines) + "\n"


def _shown(selection: pd.DataFrame) -> pd.DataFrame:
    """The selection as printed: one line per model x method x side, the accuracy rounded, reason and note joined."""
    def number(v: float) -> str:
        return "" if pd.isna(v) else f"{v:.3g}"

    return pd.DataFrame({"fp": selection["fp"], "method": selection["method"], "side": selection["side"],
                         "quantized": selection["quantized"].replace("", "-"),
                         "rotated": selection["rotated"].map({True: "yes", False: ""}),
                         "pairwise_acc": selection["pairwise_acc"].map(number),
                         "ci_low": selection["pairwise_acc_ci_low"].map(number),
                         "ci_high": selection["pairwise_acc_ci_high"].map(number),
                         "why": (selection["reason"] + selection["note"]).str.strip()})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interpipe.quant_interp.pairs",
                                     description="quant_interp pairs just above and just below each method's "
                                                 "survival frontier, from the quantize stage's frontier.csv")
    parser.add_argument("frontier", nargs="+", help="frontier.csv of one or more quantize runs (outputs/quantize/"
                                                    "<run>/); a method a later file repeats is taken from the first")
    parser.add_argument("--task", default=TASK, help=f"the task whose frontier is read (default {TASK})")
    parser.add_argument("--series", default=SERIES, help=f"the bits series (default {SERIES})")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every method)")
    parser.add_argument("--attribution", action="store_true",
                        help="compare attribution drift too (needs the attribute stage on every export)")
    parser.add_argument("--write", default=None, help="write the pairs as a quant_interp preset (YAML) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    frontier = pd.concat([read_frontier(p) for p in args.frontier], ignore_index=True)
    frontier = frontier.drop_duplicates(["model", "method", "series", "task"], keep="first")  # first file wins
    selection = select(frontier, args.task, args.series, args.methods)
    if selection.empty:
        print(f"no {args.series} rows of task {args.task} in {', '.join(args.frontier)}", file=sys.stderr)
        return 1
    print(_shown(selection).to_string(index=False))
    print("\n# exports (quantize stage):")
    for fp, overrides in quantize_overrides(selection).items():
        print(f"python -m stages.quantize model={fp} {overrides}")
    print("\n# quant_interp on the pairs (after their circuits runs):")
    print(f"python -m stages.quant_interp {pairs_override(selection, args.attribution)}")
    if args.write:
        command = " ".join(["python -m interpipe.quant_interp.pairs", *map(shlex.quote, argv)])
        Path(args.write).write_text(preset(selection, command, args.attribution))
        print(f"\nwrote {args.write}: python -m stages.quant_interp quant_interp={Path(args.write).stem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["SERIES", "SIDES", "TASK", "exports", "is_rotated", "pairs", "pairs_override", "preset",
           "quantize_overrides", "quantized_name", "read_frontier", "select"]
