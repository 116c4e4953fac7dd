"""Reports from ``arvid bench`` runs: the tables ``arvid bench`` prints, Markdown, HTML, PNG plots,
A/B comparisons of two runs, and the results table of the README.

A run's JSON (schema ``arvid.stream_bench/2``, see ``schema.py``; written by ``stream_bench.py``)
is the source of truth; everything here only formats or compares it (``/1`` reports are upgraded
on load). Committed GPU runs live in ``bench/results/`` (see the README there) and
:func:`update_readme_results` rebuilds the README's results table from them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path

from arvid.runtime.files import atomic_write, read_text
from arvid.runtime.optional import require

from .roofline import measured_over_ceiling
from .schema import SCHEMA, SCHEMAS, switch_chunks
from .stats import bootstrap_ratio_ci, mann_whitney, summarize

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
ALPHA = 0.05  # significance level of the A/B comparison


def upgrade_report(report: dict) -> dict:
    """A ``/1`` report in the ``/2`` layout: statistics recomputed from its per-chunk latencies.

    ``/1`` computed FPS from the mean latency and the speed-up from the median; both come from the
    median now, so an upgraded report's FPS can differ from what that run printed.
    """
    if report.get("schema") == SCHEMA:
        return report
    out = json.loads(json.dumps(report))
    frames = out["stream"]["chunk_frames"] * out.get("batch_size", 1)
    for v in out["variants"]:
        st = summarize(v["chunk_ms"])
        v.update(
            chunk_ms_stats=st, chunk_ms_p50=st["p50"], chunk_ms_p90=st["p90"], chunk_ms_p99=st["p99"],
            chunk_ms_mean=st["mean"], chunk_ms_std=st["std"], chunk_ms_iqr=st["iqr"], chunk_ms_cv=st["cv"],
            chunk_ms_cv_steady=st["cv"],  # /1 kept no per-chunk phase: the CV of every timed chunk
            latent_fps=frames / (st["p50"] / 1000), video_fps_dit_only=4 * frames / (st["p50"] / 1000),
        )  # fmt: skip
        v.setdefault("round_p50_ms", [])
    base = out["variants"][0]["chunk_ms_p50"]
    for v in out["variants"]:
        v["speedup_vs_baseline"] = base / v["chunk_ms_p50"]
    out.update(schema=SCHEMA, statistic="p50", upgraded_from=report.get("schema"))
    out.setdefault("warnings", [])
    return out


def load_report(path: str | Path) -> dict:
    """Read a stream_bench JSON (``/1`` reports are upgraded); a clear error if it is not one.

    Raises
    ------
    FileNotFoundError : no such file.
    ValueError : not JSON, or not a stream_bench report.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such benchmark report (write one with arvid bench --json)")
    try:
        report = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a benchmark report: invalid JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(report, dict) or report.get("schema") not in SCHEMAS:
        got = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise ValueError(f"{path}: not an arvid.stream_bench report (schema {got!r}; known: {', '.join(SCHEMAS)})")
    return upgrade_report(report)


# -- the table `arvid bench` prints -------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def format_table(report: dict) -> str:
    """Two Markdown tables (latency statistics; FPS, memory and set-up), the warnings, and the method."""
    env = report["environment"]
    git = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    lines = [
        f"arvid bench: preset {report['preset']}, {report['dtype']}, batch {report['batch_size']}, "
        f"{report['latent_frames']} latent frames = {report['chunks']} chunks "
        f"({report['warmup_chunks']} warm-up chunks excluded), {report['rounds']} round(s), "
        f"switches at {report['switch_frames'] or 'none'}",
        f"device: {env['device_name']} ({env['device']}), {env.get('torch_threads', '?')} thread(s), "
        f"load {env.get('load_average') or '?'}; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, driver {env['driver']}; arvid {env.get('arvid', '?')}, commit {git}",
        "",
        "| variant | p50 ms | mean ms | std | CV | CV steady | IQR | p90 | p99 | video FPS (DiT, p50) "
        "| vs baseline (p50) | max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['backend']} | {v['chunk_ms_p50']:.2f} | {v['chunk_ms_mean']:.2f} | {v['chunk_ms_std']:.2f} "
            f"| {v['chunk_ms_cv']:.1%} | {v['chunk_ms_cv_steady']:.1%} | {v['chunk_ms_iqr']:.2f} "
            f"| {v['chunk_ms_p90']:.2f} | {v['chunk_ms_p99']:.2f} "
            f"| {v['video_fps_dit_only']:.2f} | {v['speedup_vs_baseline']:.2f}x | {v['max_abs_diff_vs_baseline']:.1e} |"
        )
    lines += [
        "",
        "| variant | first chunk ms | capture s | host ms p50 | VAE ms p50 | video FPS end to end | peak MiB "
        "| cache MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['backend']} | {v['first_chunk_ms']:.1f} | {v['capture_seconds']:.2f} | {_fmt(v['host_ms_p50'])} "
            f"| {_fmt(v['vae_ms_p50'])} | {_fmt(v['video_fps_end_to_end'])} | {_mib(v['peak_memory_bytes'])} "
            f"| {_mib(v['cache_bytes'])} |"
        )
    if report.get("sequence_parallel", 1) > 1:
        lines += [
            "",
            f"sequence parallel over {report['sequence_parallel']} ranks (chunk latency: the whole job's, max over "
            "ranks)",
            "",
            "| variant | whole-job p50 ms | per-rank p50 ms | comm ms/chunk (mean over ranks) |",
            "|---|---:|---|---:|",
        ]
        for v in report["variants"]:
            spv = v["sequence_parallel"]
            ranks = ", ".join(f"{ms:.2f}" for ms in spv["rank_chunk_ms_p50"])
            lines.append(
                f"| {v['backend']} | {spv['job_chunk_ms_p50']:.2f} | {ranks} | {spv['comm_ms_per_chunk']:.2f} |"
            )
    lines.append(
        f"\npeak memory: {report['variants'][0]['memory_kind']}; CV steady: over the chunks with a full cache "
        "and no prompt switch (the noise, not the extra work of fill-phase or re-cache chunks)"
    )
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    # Plain text in the terminal, Markdown and HTML alike; reports written before it was plain kept
    # reStructuredText literals (``warmup``), shown here without their backticks.
    lines += ["", " ".join(report["methodology"].split("\n\n")[1].replace("``", "").split())]
    return "\n".join(lines)


# -- Markdown ----------------------------------------------------------------------------------
def _images(plots: list[Path] | None, base: Path | None) -> list[str]:
    """Markdown image links to ``plots``, relative to the folder of the Markdown file."""
    if not plots:
        return []
    lines = ["", "## Plots", ""]
    for p in plots:
        rel = os.path.relpath(p, base) if base is not None else str(p)
        lines += [f"![{p.stem.replace('_', ' ')}]({Path(rel).as_posix()})", ""]
    return lines


def format_markdown(report: dict, plots: list[Path] | None = None, base: Path | None = None) -> str:
    """The bench tables, the roofline comparison where the GPU is known, the plots and the environment."""
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
    parts += _images(plots, base)
    parts += ["", "## Environment", "", "| key | value |", "|---|---|"]
    parts += [f"| {k} | `{v}` |" for k, v in env.items()]
    return "\n".join(parts) + "\n"


def write_markdown(report: dict, path: str | Path, plots: list[Path] | None = None) -> Path:
    """Write :func:`format_markdown` of ``report`` (with links to ``plots``) to ``path``; returns the path."""
    path = Path(path)
    text = format_markdown(report, plots, path.parent)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# -- A/B comparison ----------------------------------------------------------------------------
def _run_label(report: dict, name: str) -> str:
    env = report["environment"]
    commit = (env.get("git_commit") or "unknown")[:10] + ("+dirty" if env.get("git_dirty") else "")
    return f"{name}: {env['device_name']}, torch {env['torch']}, commit {commit}, {env.get('date_utc', '?')}"


def compare_runs(a: dict, b: dict, *, alpha: float = ALPHA) -> dict:
    """Variant by variant, run ``b`` against run ``a``: p50 latencies, delta, significance, FPS.

    The delta is ``p50(b) / p50(a) - 1`` of the per-chunk latencies (positive: ``b`` is slower),
    with a 95 % bootstrap confidence interval of the ratio; ``significant`` is the two-sided
    Mann-Whitney U test on the two sets of per-chunk latencies at level ``alpha``. Variants in
    only one run are listed, not compared. The two runs should share preset, dtype, batch and
    stream settings: every recorded setting that differs (``--vae``, rounds, threads, ...) is listed
    under ``mismatches``.
    """
    # every setting a bench run records (the environment's thread count too): what differs is named
    keys = (
        "preset", "dtype", "batch_size", "latent_frames", "warmup_chunks", "rounds", "vae_decode_timed",
        "switch_frames", "stream", "sequence_parallel", "model_parameters", "baseline",
    )  # fmt: skip
    labels = {"vae_decode_timed": "--vae (VAE decode timed)"}
    env_keys = ("torch_threads",)

    def setting(report: dict, key: str):
        return report.get("environment", {}).get(key) if key in env_keys else report.get(key)

    # compared as JSON: a report still in memory holds tuples where its file holds lists
    mismatches = [
        f"{labels.get(k, k)}: {setting(a, k)!r} vs {setting(b, k)!r}"
        for k in (*keys, *env_keys)
        if json.dumps(setting(a, k), sort_keys=True) != json.dumps(setting(b, k), sort_keys=True)
    ]
    va = {v["backend"]: v for v in a["variants"]}
    vb = {v["backend"]: v for v in b["variants"]}
    rows = []
    for name, x in va.items():
        y = vb.get(name)
        if y is None:
            continue
        lo, hi = bootstrap_ratio_ci(x["chunk_ms"], y["chunk_ms"])
        p = mann_whitney(x["chunk_ms"], y["chunk_ms"])
        rows.append(
            {
                "variant": name,
                "a_p50_ms": x["chunk_ms_p50"],
                "b_p50_ms": y["chunk_ms_p50"],
                "a_iqr_ms": x["chunk_ms_iqr"],
                "b_iqr_ms": y["chunk_ms_iqr"],
                "a_video_fps": x["video_fps_dit_only"],
                "b_video_fps": y["video_fps_dit_only"],
                "a_speedup": x["speedup_vs_baseline"],
                "b_speedup": y["speedup_vs_baseline"],
                "delta_pct": 100 * (y["chunk_ms_p50"] / x["chunk_ms_p50"] - 1),
                "ratio_ci95": [lo, hi],
                "p_value": p,
                "significant": p < alpha,
                "a_samples": len(x["chunk_ms"]),
                "b_samples": len(y["chunk_ms"]),
            }
        )
    return {
        "a": _run_label(a, "A"),
        "b": _run_label(b, "B"),
        "alpha": alpha,
        "statistic": "p50 chunk latency",
        "mismatches": mismatches,
        "only_in_a": [n for n in va if n not in vb],
        "only_in_b": [n for n in vb if n not in va],
        "variants": rows,
    }


def slower_variants(comparison: dict, pct: float) -> list[dict]:
    """Rows of :func:`compare_runs` where B is slower than A by more than ``pct`` percent, significantly."""
    return [r for r in comparison["variants"] if r["significant"] and r["delta_pct"] > pct]


def format_comparison(comparison: dict, plots: list[Path] | None = None, base: Path | None = None) -> str:
    """Markdown: the two runs, the side-by-side table with deltas and significance, the plots."""
    c = comparison
    lines = ["# arvid report: run B against run A", "", f"- {c['a']}", f"- {c['b']}", ""]
    if c["mismatches"]:
        lines += ["**The runs differ in settings, so their latencies are not like for like:** "
                  + "; ".join(c["mismatches"]), ""]  # fmt: skip
    lines += [
        "| variant | A p50 ms (IQR) | B p50 ms (IQR) | delta | B/A 95 % CI | p (Mann-Whitney) | verdict "
        "| A FPS | B FPS |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in c["variants"]:
        verdict = ("**slower**" if r["delta_pct"] > 0 else "faster") if r["significant"] else "no significant change"
        lo, hi = r["ratio_ci95"]
        lines.append(
            f"| {r['variant']} | {r['a_p50_ms']:.2f} ({r['a_iqr_ms']:.2f}) | {r['b_p50_ms']:.2f} ({r['b_iqr_ms']:.2f}) "
            f"| {r['delta_pct']:+.1f} % | {lo:.3f} - {hi:.3f} | {r['p_value']:.3g} | {verdict} "
            f"| {r['a_video_fps']:.2f} | {r['b_video_fps']:.2f} |"
        )
    for side in ("a", "b"):
        if c[f"only_in_{side}"]:
            lines += ["", f"Only in run {side.upper()}: {', '.join(c[f'only_in_{side}'])}."]
    lines += [
        "",
        f"delta = B's median chunk latency over A's, minus 1 (positive: B is slower); significant: the two-sided "
        f"Mann-Whitney U test on the per-chunk latencies of all rounds, p < {c['alpha']}; the interval is a "
        "percentile bootstrap of the ratio of medians. FPS: video frames per second of the DiT, from the median.",
    ]
    lines += _images(plots, base)
    return "\n".join(lines) + "\n"


# -- HTML --------------------------------------------------------------------------------------
def markdown_to_html(markdown: str, base: Path | None = None, title: str = "arvid report") -> str:
    """A self-contained HTML page of the Markdown this module writes (headings, tables, lists, images).

    Images are embedded as data URIs (resolved against ``base``), so the page can be mailed or
    attached to a CI run on its own. Only the subset of Markdown written here is understood.
    """
    esc = html.escape

    def inline(text: str) -> str:
        text = esc(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    out, table, in_list = [], None, False
    for line in markdown.splitlines():
        if table is not None and not line.startswith("|"):
            out.append("</table>")
            table = None
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if line.startswith("|"):
            cells = [x.strip() for x in line.strip().strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue  # the header separator
            tag = "th" if table is None else "td"
            if table is None:
                out.append("<table>")
                table = True
            out.append("<tr>" + "".join(f"<{tag}>{inline(x)}</{tag}>" for x in cells) + "</tr>")
        elif m := re.match(r"^(#+) (.*)", line):
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2))}</h{n}>")
        elif m := re.match(r"^!\[(.*)\]\((.*)\)$", line):
            src = Path(m.group(2)) if base is None else base / m.group(2)
            data = base64.b64encode(src.read_bytes()).decode() if src.is_file() else ""
            out.append(f'<p><img alt="{esc(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if table is not None:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:72em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}"
    )
    body = "\n".join(out)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )


def write_html(markdown: str, path: str | Path, base: Path | None = None) -> Path:
    """Write :func:`markdown_to_html` of ``markdown`` (images under ``base``) to ``path``."""
    text = markdown_to_html(markdown, base)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- plots -------------------------------------------------------------------------------------
def _figure():
    Figure = require("matplotlib.figure", "Figure", purpose="plotting")
    return Figure(figsize=(6.4, 4.0))


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _saver(out_dir: Path, written: list[Path]):
    def save(fig, name: str) -> None:
        fig.tight_layout()
        written.append(atomic_write(out_dir / name, lambda tmp: fig.savefig(tmp, dpi=120, format="png")))

    return save


def _fps_errors(v: dict, frames: int) -> tuple[float, float]:
    """FPS below / above the median's from the IQR of the chunk latency (p75 gives the lower FPS)."""
    st = v["chunk_ms_stats"]
    fps = frames / (st["p50"] / 1000)
    return fps - frames / (st["p75"] / 1000), frames / (st["p25"] / 1000) - fps


def _switch_chunks(report: dict) -> list[int]:
    """Timed-chunk indices (within a round) whose time includes a prompt switch's re-cache."""
    chunks = switch_chunks(report["switch_frames"], report["stream"]["chunk_frames"], report["latent_frames"])
    return [c - report["warmup_chunks"] for c in chunks if c >= report["warmup_chunks"]]


def carries_information(series: list[float], rel: float = 0.01) -> bool:
    """Whether a series varies by more than ``rel`` of its largest value (a flat line says nothing)."""
    return bool(series) and max(series) - min(series) > rel * max(abs(x) for x in series)


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots of a run: FPS by variant, latency per timed chunk, and memory over the video.

    FPS bars carry error bars from the latency's IQR, and an end-to-end bar beside them where the
    VAE decode was timed; latency plots mark the chunks with a prompt switch; the memory plot is
    drawn only where some variant's memory changes over the video (a flat line carries nothing).
    Uses matplotlib's object API (no pyplot, no global backend switch), so it works headless.
    """
    out_dir = Path(out_dir)
    variants = report["variants"]
    names = [v["backend"] for v in variants]
    title = (
        f"{report['preset']}, {report['dtype']}, batch {report['batch_size']} on {report['environment']['device_name']}"
    )
    written: list[Path] = []
    save = _saver(out_dir, written)
    frames = 4 * report["stream"]["chunk_frames"] * report["batch_size"]

    fig = _figure()
    ax = fig.add_subplot()
    fps = [v["video_fps_dit_only"] for v in variants]
    err = list(zip(*(_fps_errors(v, frames) for v in variants), strict=True))
    e2e = [v.get("video_fps_end_to_end") for v in variants]
    width = 0.4 if any(e2e) else 0.8
    xs = list(range(len(names)))
    bars = ax.bar([x - width / 2 * bool(any(e2e)) for x in xs], fps, width, yerr=err, capsize=4,
                  color="tab:blue", label="DiT only")  # fmt: skip
    ax.bar_label(bars, labels=[f"{x:.1f}\n{v['speedup_vs_baseline']:.2f}x" for x, v in zip(fps, variants, strict=True)])
    if any(e2e):
        bars = ax.bar([x + width / 2 for x in xs], [x or 0 for x in e2e], width, color="tab:orange",
                      label="DiT + VAE decode")  # fmt: skip
        ax.bar_label(bars, labels=[f"{x:.1f}" if x else "" for x in e2e])
        ax.legend()
    ax.set_xticks(xs, names)
    ax.set_ylabel("video frames/s (median chunk; bars: IQR)")
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.2)
    save(fig, "fps_by_variant.png")

    fig = _figure()
    ax = fig.add_subplot()
    per_round = report["chunks"] - report["warmup_chunks"]
    for v in variants:
        ax.plot(range(len(v["chunk_ms"])), v["chunk_ms"], marker=".", label=v["backend"])
    for r in range(report["rounds"]):
        if r:
            ax.axvline(r * per_round - 0.5, color="0.8", lw=0.8)
        for i, s in enumerate(_switch_chunks(report)):
            ax.axvline(
                r * per_round + s, color="tab:red", ls="--", lw=0.8, label="prompt switch" if r == i == 0 else None
            )
    ax.set_xlabel(f"timed chunk ({report['warmup_chunks']} warm-up chunks left out; rounds one after another)")
    ax.set_ylabel("ms per chunk")
    ax.set_ylim(bottom=0)
    _integer_ticks(ax.xaxis)
    ax.set_title(title, fontsize=9)
    ax.legend()
    save(fig, "latency_per_chunk.png")

    with_memory = [v for v in variants if carries_information(v.get("memory_bytes_per_chunk") or [])]
    if with_memory:
        fig = _figure()
        ax = fig.add_subplot()
        chunk = report["stream"]["chunk_frames"]
        for v in with_memory:
            series = v["memory_bytes_per_chunk"]
            frames_done = [4 * chunk * (i + 1) for i in range(len(series))]
            ax.plot(frames_done, [b / 2**20 for b in series], marker=".", label=v["backend"])
        for c in switch_chunks(report["switch_frames"], chunk, report["latent_frames"]):
            ax.axvline(4 * chunk * c, color="tab:red", ls="--", lw=0.8)
        ax.set_xlabel("video frames generated")
        ax.set_ylabel(f"memory MiB ({with_memory[0].get('memory_kind') or 'as recorded'})")
        ax.set_ylim(bottom=0)
        _integer_ticks(ax.xaxis)
        ax.set_title(title, fontsize=9)
        ax.legend()
        save(fig, "memory_over_video.png")
    return written


def plot_comparison(comparison: dict, out_dir: str | Path) -> list[Path]:
    """One PNG: each variant's median chunk latency in run A and run B, IQR as error bars."""
    rows = comparison["variants"]
    written: list[Path] = []
    if not rows:
        return written
    fig = _figure()
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    for off, side, color in ((-0.2, "a", "tab:gray"), (0.2, "b", "tab:blue")):
        ax.bar([x + off for x in xs], [r[f"{side}_p50_ms"] for r in rows], 0.4,
               yerr=[[r[f"{side}_iqr_ms"] / 2 for r in rows]] * 2, capsize=4, color=color,
               label=f"run {side.upper()}")  # fmt: skip
    for x, r in zip(xs, rows, strict=True):
        mark = "*" if r["significant"] else ""
        ax.annotate(f"{r['delta_pct']:+.1f}%{mark}", (x, max(r["a_p50_ms"], r["b_p50_ms"])), ha="center",
                    va="bottom", xytext=(0, 8), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xticks(xs, [r["variant"] for r in rows])
    ax.set_ylabel("median ms per chunk (bars: IQR; * significant)")
    ax.margins(y=0.2)
    ax.legend()
    _saver(Path(out_dir), written)(fig, "comparison.png")
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
            report = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
        if not isinstance(report, dict) or report.get("schema") not in SCHEMAS:
            skipped.append(path.name)
            continue
        report = upgrade_report(report)
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
    text = read_text(path, "--readme")
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
