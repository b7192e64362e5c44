"""The benchmark's headline as a picture: upstream calls per token lifetime against E.

``make bench`` calls :func:`plot_calls_per_lifetime` on its rows and writes
bench/results/calls-per-lifetime.png. Without a run, draw it from a saved report::

    python -m bench.plot --from-markdown bench/results/reference.md
    python -m bench.plot --from-json bench/results/latest.json

matplotlib is imported only here (a dev dependency; the function never needs it), and through
its object API, so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLOT_PATH = ROOT / "bench" / "results" / "calls-per-lifetime.png"
# name, legend, colour, marker, where its value labels go (points; below for the vendor, whose
# line meets the per-env one at E = 1)
VARIANTS = (
    ("vendor", "token vendor (shared tier)", "#1f77b4", "o", -14),
    ("per-env", "per-environment cache", "#ff7f0e", "s", 7),
    ("naive", "naive (an exchange per request)", "#d62728", "^", 7),
)


def plot_calls_per_lifetime(
    rows: Sequence[Mapping[str, Any]], path: Path = PLOT_PATH, *, source: str = ""
) -> Path:
    """Draw each variant's calls per token lifetime (and what issue #3 expects) against E.

    ``rows`` are the report's fleet rows: ``variant``, ``environments``,
    ``calls_per_token_lifetime`` and ``expected_calls_per_token_lifetime``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    figure = Figure(figsize=(7.5, 4.6), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    envs = sorted({int(row["environments"]) for row in rows})
    for name, label, color, marker, offset in VARIANTS:
        mine = sorted(
            (row for row in rows if row["variant"] == name), key=lambda r: r["environments"]
        )
        if not mine:
            continue
        x = [int(row["environments"]) for row in mine]
        measured = [float(row["calls_per_token_lifetime"]) for row in mine]
        expected = [float(row["expected_calls_per_token_lifetime"]) for row in mine]
        axes.plot(x, expected, linestyle=":", color=color, linewidth=1.2)
        axes.plot(x, measured, marker=marker, color=color, linewidth=2, label=label)
        for xi, yi in zip(x, measured, strict=True):
            axes.annotate(
                f"{yi:g}",
                (xi, yi),
                textcoords="offset points",
                xytext=(0, offset),
                ha="center",
                fontsize=8,
                color=color,
            )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(envs)
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_ylim(0.5, max(float(r["calls_per_token_lifetime"]) for r in rows) * 2.5)
    axes.set_xlabel("E, execution environments (one process each)")
    axes.set_ylabel("upstream calls per token lifetime")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", title="dotted: expected (1, E, R x E)", fontsize=9)
    title = "Igni token requests per token lifetime, by fleet size"
    axes.set_title(title + (f"\n{source}" if source else ""), fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software version in the file: the same figures give the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_report(report: Mapping[str, Any], path: Path = PLOT_PATH) -> Path:
    """What ``make bench`` calls: the figure of a whole report (bench.run's JSON)."""
    git = report.get("git") or {}
    started = str(report.get("started_at", ""))[:10]
    note = f"make bench, {started}, commit {git.get('commit') or '?'}"
    return plot_calls_per_lifetime(report["fleet"], path, source=note)


_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(vendor|per-env|naive)\s*\|")


def rows_from_markdown(text: str) -> list[dict[str, Any]]:
    """The fleet rows of a report rendered by bench.run (e.g. bench/results/reference.md)."""
    lines = text.splitlines()
    header = next(line for line in lines if "**calls / token lifetime**" in line)
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    measured = columns.index("**calls / token lifetime**")
    expected = columns.index("expected")
    rows: list[dict[str, Any]] = []
    for line in lines[lines.index(header) + 2 :]:
        if not _ROW.match(line):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(
            {
                "environments": int(cells[0]),
                "variant": cells[1],
                "calls_per_token_lifetime": float(cells[measured].strip("*")),
                "expected_calls_per_token_lifetime": float(cells[expected]),
            }
        )
    return rows


def _source_of_markdown(text: str, path: Path) -> str:
    """'bench/results/reference.md, 2026-11-28, commit c354b6a' from the report's second line."""
    stamp = re.search(r"^(\d{4}-\d{2}-\d{2})T.*?commit (\w+)", text, re.MULTILINE)
    where = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return f"{where}, {stamp.group(1)}, commit {stamp.group(2)}" if stamp else str(where)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-markdown", type=Path, metavar="FILE")
    source.add_argument("--from-json", type=Path, metavar="FILE")
    parser.add_argument("--out", type=Path, default=PLOT_PATH)
    args = parser.parse_args(argv)
    if args.from_json:
        print(plot_report(json.loads(args.from_json.read_text(encoding="utf-8")), args.out))
        return 0
    text = args.from_markdown.read_text(encoding="utf-8")
    rows = rows_from_markdown(text)
    if not rows:
        print(f"no fleet rows in {args.from_markdown}", file=sys.stderr)
        return 1
    note = _source_of_markdown(text, args.from_markdown)
    print(plot_calls_per_lifetime(rows, args.out, source=note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
