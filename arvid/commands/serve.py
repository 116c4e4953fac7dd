"""``arvid serve``: stream generated video to browsers over WebRTC, prompts switched live.

``arvid serve-bench URL``: an aiortc client that measures a running server (time to first frame,
received FPS, frame pacing, prompt-to-pixel latency, stalls) in ``bench``'s JSON and report style.
"""

from __future__ import annotations

from ._common import add_common_args, add_model_args, int_list, model_preset, positive_int, seed_int, stream_config
from .generate import add_run_args, check_run_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="real-time server: WebRTC video, prompts switched live (Daydream Scope's API), a page at /",
        description="Serve streams over WebRTC: POST /offer (or Scope's /api/v1/webrtc/offer) with "
        "{sdp, type, initialParameters: {prompts: [{text, weight}], seed?}}; control messages on the "
        "'parameters' data channel; the page at /, /health, /metrics. Needs pip install 'arvid[serve]'.",
    )
    add_common_args(p)
    add_model_args(p)
    add_run_args(p)
    p.add_argument("--fps", type=positive_int, default=16, help="video frames per second (default: 16, as Wan)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--gpus",
        type=int_list,
        help="GPU indices, one worker (one generator, one session at a time) per GPU: e.g. 0,1 "
        "(default: one worker on --device)",
    )
    p.add_argument(
        "--max-sessions",
        type=positive_int,
        help="sessions served at once; each holds its own generator, spread over the workers' devices "
        "(default: one per worker); another client gets HTTP 503",
    )
    p.add_argument("--token", help="ask POST /offer and PATCH /offer/{id} for 'Authorization: Bearer TOKEN'")
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN / TURN server for clients behind NAT, e.g. stun:stun.example.org:3478; repeatable "
        "(default: none, host candidates only)",
    )
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up chunks before ready")
    p.set_defaults(func=cmd_serve)

    b = sub.add_parser(
        "serve-bench",
        help="measure a running `arvid serve` from an aiortc client (first frame, FPS, pacing, prompt-to-pixel)",
    )
    b.add_argument(
        "url", nargs="?", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)"
    )
    b.add_argument("--seconds", type=float, default=10.0, help="how long to receive (default: 10)")
    b.add_argument("--prompt", action="append", help="prompts: the first at the start, the others on the schedule")
    b.add_argument("--switch-every", type=float, default=2.0, help="seconds between prompt switches (default: 2)")
    b.add_argument("--seed", type=seed_int, default=0, help="initialParameters.seed (default: 0)")
    b.add_argument("--token", help="bearer token of the server's --token")
    b.add_argument("--json", help="write the results to this JSON file")
    b.set_defaults(func=cmd_serve_bench)


def devices_of(args) -> list[str]:
    """The device of each session slot: ``--gpus`` (one worker per GPU) or ``--device``, times
    ``--max-sessions`` spread round-robin over them."""
    from arvid.runtime.devices import resolve_device

    if args.gpus:
        import torch

        n = torch.cuda.device_count()
        bad = [g for g in args.gpus if not 0 <= g < n]
        if bad:
            raise ValueError(f"--gpus {','.join(map(str, args.gpus))}: this machine has {n} CUDA device(s)")
        workers = [f"cuda:{g}" for g in args.gpus]
    else:
        workers = [str(resolve_device(args.device))]
    n = args.max_sessions or len(workers)
    return [workers[i % len(workers)] for i in range(n)]


def build_generator(args, device: str | None = None):
    """The one place a served generator is built: a :class:`~arvid.pipeline.Pipeline` (DiT, text
    encoder, VAE) for ``arvid generate``'s model / backend / stream flags, on ``device`` (default
    ``args.device``). Everything else in :mod:`arvid.serve` only calls :meth:`Pipeline.stream`,
    :meth:`Pipeline.encode` and reads ``pipe.vae``."""
    import copy

    from .generate import pipeline_from_args

    if device is not None:
        args = copy.copy(args)
        args.device = device
    return pipeline_from_args(args, need_vae=True)


def cmd_serve(args) -> int:
    import asyncio
    import logging
    import signal
    import sys

    from arvid.runtime.optional import require

    # the extra first: one line naming it, before any model loads
    for module in ("aiohttp", "aiortc", "prometheus_client"):
        require(module, purpose="arvid serve")
    check_run_args(args)
    stream_config(args)
    model_preset(args)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: a port is 1 to 65535")
    devices = devices_of(args)

    from arvid.serve.app import Server, run

    logging.basicConfig(level=logging.INFO, format="arvid serve: %(message)s", stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    server = Server(
        lambda device: build_generator(args, device), devices, fps=args.fps, seed=args.seed, token=args.token,
        warmup=args.warmup, ice_servers=args.ice_server,
    )  # fmt: skip

    async def main() -> str:
        stop = asyncio.Event()
        got: list[str] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: (got.append(signal.Signals(s).name), stop.set()))

        def ready(_runner) -> None:
            print(
                f"arvid serve: listening on http://{args.host}:{args.port}/ ({len(devices)} session(s) on "
                f"{', '.join(sorted(set(devices)))}); loading the model, /health says when it is ready",
                file=sys.stderr,
            )

        await run(server, args.host, args.port, stop, on_ready=ready)
        return got[0] if got else "stop"

    why = asyncio.run(main())
    print(f"arvid serve: stopped ({why})", file=sys.stderr)
    # Every session, connection and the listener are closed, and nothing is left to write. What remains
    # is the interpreter's final garbage collection over the model, diffusers, transformers and aiortc
    # objects, measured at 2-15 s after a SIGTERM on the shared 2-core machine (a supervisor's grace
    # period may run out first), or a model still loading in its thread: end the process now, status 0.
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_serve_bench(args) -> int:
    import asyncio
    import json

    from arvid.serve.client import bench, format_report

    if args.seconds <= 0:
        raise ValueError(f"--seconds {args.seconds}: must be > 0")
    if args.switch_every <= 0:
        raise ValueError(f"--switch-every {args.switch_every}: must be > 0")
    prompts = args.prompt or ["a red fox running through fresh snow", "a lighthouse in a storm at night"]
    result = asyncio.run(
        bench(args.url, prompts, seconds=args.seconds, switch_every=args.switch_every, seed=args.seed, token=args.token)
    )
    print(format_report(result))
    if args.json:
        from arvid.runtime.files import atomic_write

        text = json.dumps(result, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.json}")
    return 0
