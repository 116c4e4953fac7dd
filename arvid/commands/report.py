"""``arvid report``: Markdown and plots from a bench JSON, or the README's results table from bench/results/."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("report", help="Markdown / plots of a bench run, or the README results table")
    p.add_argument("run", nargs="?", help="an `arvid bench --json` file")
    p.add_argument("--plots", help="write PNG plots of RUN into this folder")
    p.add_argument("--markdown", help="write a Markdown report of RUN here")
    p.add_argument("--from", dest="results_dir", help="folder of committed runs (bench/results)")
    p.add_argument("--readme", help="with --from: rewrite the table between the results markers of this file")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from arvid.bench.report import (
        format_markdown,
        load_report,
        plot_report,
        results_table,
        update_readme_results,
        write_markdown,
    )

    if args.run is None and args.results_dir is None:
        raise ValueError("give a run JSON (with --plots / --markdown) or --from DIR (with --readme)")
    if args.readme and not args.results_dir:
        raise ValueError("--readme needs --from DIR")
    if (args.plots or args.markdown) and not args.run:
        raise ValueError("--plots / --markdown need a run JSON")
    if args.run:
        report = load_report(args.run)
        if args.markdown:
            print(f"wrote {write_markdown(report, args.markdown)}", file=sys.stderr)
        for path in plot_report(report, args.plots) if args.plots else []:
            print(f"wrote {path}", file=sys.stderr)
        if not (args.markdown or args.plots):
            print(format_markdown(report))
    if args.results_dir:
        if args.readme:
            changed = update_readme_results(args.readme, args.results_dir)
            print(f"{args.readme}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
        else:
            print(results_table(args.results_dir))
    return 0
