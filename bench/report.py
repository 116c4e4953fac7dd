"""Reports from ``arvid bench --json`` runs: Markdown, PNG plots, and the results table of the README.

A run's JSON (schema ``arvid.stream_bench/1``, see ``stream_bench.py``) is the source of truth;
everything here only re-formats it. Committed GPU runs live in ``bench/results/`` (see the README
there) and :func:`update_readme_results` rebuilds the README's results table from them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from arvid.runtime.files import atomic_write
from arvid.runtime.optional import require

from .roofline import measured_over_ceiling
from .stream_bench import format_table

SCHEMA = "arvid.stream_bench/1"
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def load_report(path: str | Path) -> dict:
    """Read a stream_bench JSON; a clear error if it is not one."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a benchmark report: {e}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        got = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise ValueError(f"{path}: not an {SCHEMA} report (schema {got!r})")
    return report


# -- Markdown ----------------------------------------------------------------------------------
def format_markdown(report: dict) -> str:
    """The bench table, the roofline comparison where the GPU is known, and the environment."""
    env = report["environment"]
    parts = [f"# arvid bench: {report['preset']} on {env['device_name']}", "", format_table(report)]
    ratio = measured_over_ceiling(report) if env.get("device", "").startswith("cuda") else None
    if ratio is not None:
        parts += [
            "",
            f"## Measured vs roofline ceiling ({ratio['gpu']}, {ratio['precision']}, datasheet peaks)",
            "",
            f"DiT-only ceiling over the timed chunks: {ratio['ceiling_fps_dit_only']:.1f} video FPS "
            f"({ratio['ceiling_ms_per_chunk']:.1f} ms per chunk).",
            "",
            "| backend | video FPS (DiT only) | fraction of ceiling |",
            "|---|---:|---:|",
        ]
        parts += [
            f"| {v['backend']} | {v['video_fps_dit_only']:.2f} | {v['fraction_of_ceiling']:.1%} |"
            for v in ratio["variants"]
        ]
    parts += ["", "## Environment", "", "| key | value |", "|---|---|"]
    parts += [f"| {k} | `{v}` |" for k, v in env.items()]
    return "\n".join(parts) + "\n"


def write_markdown(report: dict, path: str | Path) -> Path:
    """Write :func:`format_markdown` of ``report`` to ``path``; returns the path."""
    text = format_markdown(report)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


# -- plots -------------------------------------------------------------------------------------
def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots of a run: FPS by variant, latency per timed chunk, and memory over the video.

    The memory plot needs a per-variant ``memory_bytes_per_chunk`` list (one value per chunk of
    the video); it is skipped when no variant has one. Uses matplotlib's object API (no pyplot,
    no global backend switch), so it works headless.
    """
    Figure = require("matplotlib.figure", "Figure", purpose="plotting")
    out_dir = Path(out_dir)
    variants = report["variants"]
    names = [v["backend"] for v in variants]
    title = (
        f"{report['preset']}, {report['dtype']}, batch {report['batch_size']} on {report['environment']['device_name']}"
    )
    written = []

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        written.append(atomic_write(out_dir / name, lambda tmp: fig.savefig(tmp, dpi=120, format="png")))

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    fps = [v["video_fps_dit_only"] for v in variants]
    bars = ax.bar(names, fps, color="tab:blue")
    ax.bar_label(bars, labels=[f"{x:.1f}\n{v['speedup_vs_baseline']:.2f}x" for x, v in zip(fps, variants, strict=True)])
    ax.set_ylabel("video frames/s (DiT only)")
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.2)
    save(fig, "fps_by_variant.png")

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for v in variants:
        ax.plot(range(len(v["chunk_ms"])), v["chunk_ms"], marker=".", label=v["backend"])
    ax.set_xlabel(f"timed chunk ({report['warmup_chunks']} warm-up chunks left out; rounds concatenated)")
    ax.set_ylabel("ms per chunk")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend()
    save(fig, "latency_per_chunk.png")

    with_memory = [v for v in variants if v.get("memory_bytes_per_chunk")]
    if with_memory:
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        chunk = report["stream"]["chunk_frames"]
        for v in with_memory:
            series = v["memory_bytes_per_chunk"]
            frames = [4 * chunk * (i + 1) for i in range(len(series))]
            ax.plot(frames, [b / 2**20 for b in series], marker=".", label=v["backend"])
        ax.set_xlabel("video frames generated")
        ax.set_ylabel(f"memory MiB ({with_memory[0].get('memory_kind') or 'as recorded'})")
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.legend()
        save(fig, "memory_over_video.png")
    return written


# -- the committed results and the README table -------------------------------------------------
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")


def _date_of(report: dict, path: Path) -> str:
    for key in ("date", "timestamp"):
        value = report.get(key) or report["environment"].get(key)
        if value:
            return str(value)[:10]
    m = _DATE.match(path.name)
    return m.group(1) if m else "-"


def results_rows(results_dir: str | Path) -> tuple[list[dict], list[str]]:
    """One row per variant of every stream_bench JSON in ``results_dir``; plus files skipped.

    JSON files of another schema (say a pytest-benchmark run kept beside them) are skipped and
    named; a file that is not valid JSON is an error.
    """
    rows, skipped = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(report, dict) or report.get("schema") != SCHEMA:
            skipped.append(path.name)
            continue
        env = report["environment"]
        for v in report["variants"]:
            rows.append(
                {
                    "gpu": env["device_name"],
                    "preset": report["preset"],
                    "dtype": report["dtype"],
                    "variant": v["backend"],
                    "p50_ms": v["chunk_ms_p50"],
                    "video_fps_dit_only": v["video_fps_dit_only"],
                    "speedup": v["speedup_vs_baseline"],
                    "commit": (env.get("git_commit") or "unknown")[:10],
                    "date": _date_of(report, path),
                    "file": path.name,
                }
            )
    rows.sort(key=lambda r: (r["date"], r["gpu"], r["preset"], r["file"]))
    return rows, skipped


def results_table(results_dir: str | Path) -> str:
    """Markdown table of every committed run in ``results_dir`` (a note when there is none)."""
    rows, skipped = results_rows(results_dir)
    if not rows:
        lines = ["_No benchmark runs committed yet: nothing has been measured on a GPU._"]
    else:
        lines = [
            "| GPU | preset | dtype | variant | p50 ms/chunk | video FPS (DiT only) | speedup | commit | date | run |",
            "|---|---|---|---|---:|---:|---:|---|---|---|",
        ]
        lines += [
            f"| {r['gpu']} | {r['preset']} | {r['dtype']} | {r['variant']} | {r['p50_ms']:.2f} "
            f"| {r['video_fps_dit_only']:.2f} | {r['speedup']:.2f}x | `{r['commit']}` | {r['date']} | {r['file']} |"
            for r in rows
        ]
    if skipped:
        lines += ["", f"_Not stream_bench reports, left out: {', '.join(skipped)}._"]
    return "\n".join(lines)


def update_readme_results(readme_path: str | Path, results_dir: str | Path) -> bool:
    """Replace what lies between the results markers of ``readme_path`` with :func:`results_table`.

    Returns whether the file changed. Raises ``ValueError`` when the markers are missing, doubled
    or out of order (the README is never rewritten then).
    """
    path = Path(readme_path)
    text = path.read_text()
    if (
        text.count(README_START) != 1
        or text.count(README_END) != 1
        or text.index(README_START) > text.index(README_END)
    ):
        raise ValueError(f"{path}: needs exactly one {README_START} followed by one {README_END}")
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    new = f"{head}{README_START}\n{results_table(results_dir)}\n{README_END}{tail}"
    if new == text:
        return False
    atomic_write(path, lambda tmp: tmp.write_text(new))
    return True
