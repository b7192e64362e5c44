"""bench/plot.py: the benchmark's calls-per-lifetime picture, drawn from a report's rows."""

from __future__ import annotations

from pathlib import Path

from bench.plot import plot_report, rows_from_markdown

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_reference_tables_rows_are_read_back() -> None:
    # Given the reference run's markdown report
    text = (REPO_ROOT / "bench" / "results" / "reference.md").read_text(encoding="utf-8")

    # When its fleet table is read
    rows = rows_from_markdown(text)

    # Then every E has the three variants, with the headline and what was expected
    assert {(r["environments"], r["variant"]) for r in rows} == {
        (e, v) for e in (1, 4, 16, 32) for v in ("vendor", "per-env", "naive")
    }
    vendor = [r for r in rows if r["variant"] == "vendor"]
    assert {r["calls_per_token_lifetime"] for r in vendor} == {1.0}
    naive_32 = next(r for r in rows if r["variant"] == "naive" and r["environments"] == 32)
    assert naive_32["expected_calls_per_token_lifetime"] == 320.0


def test_a_report_is_drawn_as_a_png_the_same_bytes_each_time(tmp_path: Path) -> None:
    # Given a report as bench.run builds it
    text = (REPO_ROOT / "bench" / "results" / "reference.md").read_text(encoding="utf-8")
    report = {
        "fleet": rows_from_markdown(text),
        "git": {"commit": "abc1234"},
        "started_at": "2026-11-30T00:00:00+00:00",
    }

    # When it is drawn twice
    first = plot_report(report, tmp_path / "a.png").read_bytes()
    second = plot_report(report, tmp_path / "b.png").read_bytes()

    # Then it is a PNG, and the same figures give the same file (a commit shows real changes)
    assert first.startswith(PNG_SIGNATURE)
    assert first == second
