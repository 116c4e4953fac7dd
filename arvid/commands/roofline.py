"""``arvid roofline``: FLOPs and bytes per chunk, and the FPS ceiling per precision on a named GPU."""

from arvid.bench.roofline import add_roofline_parser


def register(sub) -> None:
    add_roofline_parser(sub)
