"""``arvid report``: Markdown / HTML / plots of a bench run, an A/B comparison of two runs, or the
README's results table from bench/results/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    p.add_argument("--plots", help="write PNG plots into this folder (default with --markdown / --html: beside them)")
    p.add_argument("--markdown", help="write a Markdown report here, plots embedded")
    p.add_argument("--html", help="write a self-contained HTML report here, plots embedded")
    p.add_argument(
        "--fail-if-slower",
        type=non_negative_float,
        metavar="PCT",
        help="with A B: exit 1 when a variant of B is slower than in A by more than PCT percent, significantly",
    )
    p.add_argument("--from", dest="results_dir", help="folder of committed runs (bench/results)")
    p.add_argument("--readme", help="with --from: rewrite the table between the results markers of this file")
    p.set_defaults(func=cmd_report)


def _plots_dir(args) -> Path | None:
    if args.plots:
        return Path(args.plots)
    first = args.markdown or args.html
    return Path(first).with_name(Path(first).stem + "_plots") if first else None


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
    from arvid.bench.report import (
        compare_runs,
        format_comparison,
        format_markdown,
        load_report,
        plot_comparison,
        plot_report,
        results_table,
        slower_variants,
        update_readme_results,
        write_html,
    )
    from arvid.runtime.files import atomic_write

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
    status = 0
    if args.runs:
        reports = [load_report(r) for r in args.runs]
        out = _plots_dir(args)
        if len(reports) == 1:
            plots = _try_plots(plot_report, reports[0], out) if out else []
            text = lambda base: format_markdown(reports[0], plots, base)
        else:
            comparison = compare_runs(*reports)
            plots = _try_plots(plot_comparison, comparison, out) if out else []
            text = lambda base: format_comparison(comparison, plots, base)
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
    if args.results_dir:
        if args.readme:
            changed = update_readme_results(args.readme, args.results_dir)
            print(f"{args.readme}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
        else:
            print(results_table(args.results_dir))
    return status
