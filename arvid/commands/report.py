"""``arvid report``: Markdown / HTML / plots of a bench run, an A/B comparison of two runs, or the
README's results table from bench/results/."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._checks import check_output_dir, check_output_file


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="report on one bench run, compare two (A B), or rebuild the README results table",
        description="One run: its tables, plots, Markdown or HTML. Two runs (A B): every variant side by side "
        "with the change of its median chunk latency and whether that change is significant. --from DIR: the "
        "results table of the runs committed there.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="`arvid bench --json` files: one, or two to compare (A B)")
    p.add_argument("--plots", help="write PNG plots into this folder (default with --markdown: NAME_plots/ beside it)")
    p.add_argument("--markdown", help="write a Markdown report here, linking its plots")
    p.add_argument("--html", help="write a self-contained HTML report here, plots embedded (no other file)")
    p.add_argument(
        "--fail-if-slower",
        type=non_negative_float,
        metavar="PCT",
        help="with A B: exit 1 when a variant of B is slower than in A by more than PCT percent, significantly",
    )
    p.add_argument("--from", dest="results_dir", help="folder of committed runs (bench/results)")
    p.add_argument("--readme", help="with --from: rewrite the table between the results markers of this file")
    p.set_defaults(func=cmd_report)


@contextlib.contextmanager
def _plots_dir(args) -> Iterator[Path | None]:
    """Where the plots go: ``--plots``, else ``NAME_plots/`` beside ``--markdown`` (which links them),
    else, for ``--html`` alone, a temporary folder (the page embeds them; nothing else is written).
    A folder made here is removed again if the report fails, so no half-written plots stay."""
    if not (args.plots or args.markdown):
        if not args.html:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="arvid-report-") as tmp:
            yield Path(tmp)
        return
    from arvid.runtime.files import removed_on_failure

    out = Path(args.plots) if args.plots else Path(args.markdown).with_name(Path(args.markdown).stem + "_plots")
    with removed_on_failure(out):
        yield out


def _try_plots(plot, *plot_args) -> list[Path]:
    """Plots where matplotlib is installed; without it the reports are written without them (one line)."""
    try:
        return plot(*plot_args)
    except ValueError as e:
        if "matplotlib" not in str(e):
            raise
        print(f"arvid report: {e}; writing the report without plots", file=sys.stderr)
        return []


def cmd_report(args) -> int:
    from arvid.bench.report import load_report, results_table, update_readme_results

    if not args.runs and args.results_dir is None:
        raise ValueError("give a run JSON (with --plots / --markdown / --html), two to compare, or --from DIR")
    if len(args.runs) > 2:
        raise ValueError(f"give one run or two (A B) to compare, got {len(args.runs)}")
    if args.readme and not args.results_dir:
        raise ValueError("--readme needs --from DIR")
    if (args.plots or args.markdown or args.html) and not args.runs:
        raise ValueError("--plots / --markdown / --html need a run JSON")
    if args.fail_if_slower is not None and len(args.runs) != 2:
        raise ValueError("--fail-if-slower compares two runs: give A.json B.json")
    if args.results_dir and not Path(args.results_dir).is_dir():
        raise FileNotFoundError(f"--from {args.results_dir}: no such directory")
    if args.readme and not Path(args.readme).is_file():
        raise FileNotFoundError(f"--readme {args.readme}: no such file")
    # every destination before any work: a report is never lost to an unwritable path at its end
    check_output_file(args.markdown, "--markdown")
    check_output_file(args.html, "--html")
    check_output_dir(args.plots, "--plots")
    check_output_file(args.readme, "--readme")
    status = 0
    if args.runs:
        reports = [load_report(r) for r in args.runs]
        with _plots_dir(args) as out:
            status = _write_reports(args, reports, out)
    if args.results_dir:
        if args.readme:
            changed = update_readme_results(args.readme, args.results_dir)
            print(f"{args.readme}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
        else:
            print(results_table(args.results_dir))
    return status


def _write_reports(args, reports: list[dict], out: Path | None) -> int:
    from arvid.bench.report import (
        compare_runs,
        format_comparison,
        format_markdown,
        plot_comparison,
        plot_report,
        slower_variants,
        write_html,
    )
    from arvid.runtime.files import atomic_write

    status = 0
    if len(reports) == 1:
        plots = _try_plots(plot_report, reports[0], out) if out else []
        text = lambda base: format_markdown(reports[0], plots, base)
    else:
        comparison = compare_runs(*reports)
        plots = _try_plots(plot_comparison, comparison, out) if out else []
        text = lambda base: format_comparison(comparison, plots, base)
    if args.plots or args.markdown:  # for --html alone they live in a temporary folder, embedded
        for path in plots:
            print(f"wrote {path}", file=sys.stderr)
    if args.markdown:
        md = Path(args.markdown)
        body = text(md.parent)
        print(f"wrote {atomic_write(md, lambda tmp: tmp.write_text(body))}", file=sys.stderr)
    if args.html:
        page = Path(args.html)
        print(f"wrote {write_html(text(page.parent), page, page.parent)}", file=sys.stderr)
    if not (args.markdown or args.html or args.plots) or len(reports) == 2:
        print(text(None))
    if args.fail_if_slower is not None:
        slow = slower_variants(comparison, args.fail_if_slower)
        for r in slow:
            print(
                f"arvid report: {r['variant']} is {r['delta_pct']:.1f} % slower in B than in A "
                f"(p = {r['p_value']:.3g}; limit {args.fail_if_slower} %)",
                file=sys.stderr,
            )
        status = 1 if slow else 0
    return status
