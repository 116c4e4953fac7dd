"""``arvid report``: Markdown and plots from a bench JSON, or the README's results table from bench/results/."""

from arvid.bench.report import add_report_parser


def register(sub) -> None:
    add_report_parser(sub)
