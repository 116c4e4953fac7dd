"""Arguments and helpers shared by the ``arvid`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses

# torch-free (arvid.runtime imports its modules lazily): the parser reads the presets and LongLive's
# stream settings off their one home
from arvid.runtime.config import PRESETS, StreamConfig


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (0 is not "not given": leave the flag out for the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


SEED_MAX = 2**63 - 2  # the run seeds torch.Generator with seed and seed + 1; both must fit an int64


def seed_int(text: str) -> int:
    """argparse type: a seed that fits a 64-bit integer (0 to 2**63 - 2; the run also uses seed + 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must fit a 64-bit integer (0 to {SEED_MAX}), got {value}")
    return value


def add_common_args(p: argparse.ArgumentParser, *, stream: bool = True) -> None:
    """--config, --preset, --device, --dtype, --seed and, with ``stream``, the video's --frames,
    --switch-frames and stream flags (left out where no video is generated, e.g. ``arvid quantize``)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="run settings from a .yaml / .json file: these flags' names (dashes or underscores) or LongLive's "
        "inference YAML keys; flags on the command line override it",
    )
    p.add_argument(
        "--preset",
        default="tiny",
        help=f"model preset: {', '.join(PRESETS)} (default: tiny; with --model: wan2.1-t2v-1.3b)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed of the noise and of random weights, 0 to 2**63 - 2 (default: 0)"
    )
    if not stream:
        _read_config_before_parsing(p)
        return
    p.add_argument("--frames", type=positive_int, help="latent frames to generate (a multiple of the chunk)")
    p.add_argument("--switch-frames", type=int_list, default=(), help="prompt switch frames, e.g. 12,24")
    add_stream_args(p)
    _read_config_before_parsing(p)


def add_stream_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~arvid.runtime.StreamConfig` field (default: LongLive's shipped settings)."""
    d = StreamConfig()
    g = p.add_argument_group("streaming (LongLive's settings by default)")
    g.add_argument("--chunk-frames", type=positive_int, help=f"latent frames per chunk (default: {d.chunk_frames})")
    g.add_argument(
        "--sink-frames",
        type=non_negative_int,
        help="frame sink: the first latent frames, pinned in the cache; a multiple of the chunk "
        f"(default: {d.sink_frames})",
    )
    g.add_argument(
        "--attention-frames",
        type=positive_int,
        help="latent frames attended to: sink + window, the current chunk included; a multiple of the chunk, "
        f"above the sink (LongLive's local_attn_size; default: {d.attention_frames})",
    )
    g.add_argument(
        "--denoising-steps",
        type=int_list,
        help=f"denoising step list, warped as LongLive does (default: {','.join(map(str, d.denoising_steps))})",
    )
    g.add_argument(
        "--num-train-timesteps",
        type=positive_int,
        help=f"training timesteps of the scheduler (default: {d.num_train_timesteps})",
    )
    g.add_argument("--shift", type=float, help=f"timestep shift of the flow-matching schedule (default: {d.shift})")
    g.add_argument(
        "--context-noise",
        type=float,
        help=f"timestep of the clean-context cache update (default: {d.context_noise:g})",
    )
    g.add_argument(
        "--global-sink",
        action=argparse.BooleanOptionalAction,
        help="re-cache at a prompt switch with LongLive's global_sink (default: on); "
        "--no-global-sink clears the cache and makes the re-run frames the new sink",
    )


STREAM_FIELDS = (
    "chunk_frames",
    "sink_frames",
    "attention_frames",
    "denoising_steps",
    "num_train_timesteps",
    "shift",
    "context_noise",
    "global_sink",
)


def stream_config(args):
    """The :class:`~arvid.runtime.StreamConfig` of the stream flags (unset ones: LongLive's defaults)."""
    from arvid.runtime import StreamConfig

    given = {f: getattr(args, f) for f in STREAM_FIELDS if getattr(args, f, None) is not None}
    if "denoising_steps" in given:
        given["denoising_steps"] = tuple(given["denoising_steps"])
    try:
        return StreamConfig(**given)
    except ValueError as e:
        raise ValueError(f"stream settings: {e}") from None


#: Options that say where outputs go, not what they hold (left out of :func:`resolved_config`).
OUTPUT_ONLY_OPTIONS = ("out", "out_dir", "latents", "png_dir", "json", "quiet")


def resolved_config(args) -> dict:
    """Every option of the run after the config file and the command line, JSON-able, with the
    resolved :class:`~arvid.runtime.StreamConfig`: what outputs record in their metadata. Where the
    outputs go (and ``--quiet``) is left out: it does not change them, and two identical runs written
    to different paths give identical bytes."""
    out = {}
    for key, value in sorted(vars(args).items()):
        # "_..." : what a command derived from the options and kept on args (e.g. the parsed variant)
        if key in ("func", *OUTPUT_ONLY_OPTIONS) or key.startswith("_") or callable(value):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    out["stream_config"] = dataclasses.asdict(stream_config(args))
    return out


# -- --config: file values become the parser's defaults, so command-line flags override them -------
def _read_config_before_parsing(p: argparse.ArgumentParser) -> None:
    """Make ``p`` read ``--config FILE`` before it parses anything else.

    argparse has no hook for defaults from a file: ``p.parse_known_args`` (which the parent parser
    calls for a subcommand) is wrapped to find ``--config`` in the arguments first, convert the
    file's values with the flags' own types, and hand them in as the starting namespace (argparse
    leaves attributes already there alone, so a flag given on the command line wins).
    """
    # argparse would take --conf for --config, which the scan below would miss: no abbreviations here.
    p.allow_abbrev = False
    original = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        path = _config_path(argv)
        if path is None:
            return original(argv, namespace)
        try:
            values = config_defaults(p, path)
        except (ValueError, FileNotFoundError) as e:  # one line, as argparse reports a bad flag (exit 2)
            p.exit(2, f"{p.prog}: error: {e}\n")
        namespace = namespace if namespace is not None else argparse.Namespace()
        # An append flag (--prompt) would add to the file's list: those are filled in after parsing,
        # where the command line gave none.
        appended = {a.dest for a in p._actions if isinstance(a, argparse._AppendAction)}
        for dest, value in values.items():
            if dest not in appended and not hasattr(namespace, dest):
                setattr(namespace, dest, value)
        # An option the file gives is not required on the command line any more.
        flipped = [a for a in p._actions if a.required and a.dest in values]
        groups = [
            g for g in p._mutually_exclusive_groups if g.required and any(a.dest in values for a in g._group_actions)
        ]
        for x in flipped + groups:
            x.required = False
        try:
            parsed, rest = original(argv, namespace)
        finally:
            for x in flipped + groups:
                x.required = True
        for dest in appended & values.keys():
            if getattr(parsed, dest, None) is None:
                setattr(parsed, dest, values[dest])
        return parsed, rest

    p.parse_known_args = parse_known_args


def _config_path(argv: list[str]) -> str | None:
    path = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config":
            if i + 1 >= len(argv):
                return None  # argparse itself says "expected one argument"
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def config_defaults(p: argparse.ArgumentParser, path: str) -> dict:
    """``{dest: value}`` for the options of ``p`` set by the config file ``path``, converted as the flags
    convert their text. Unknown keys are one error naming them all; LongLive keys that have no flag in
    this command are skipped with a note on stderr."""
    import sys

    from arvid.runtime.config_file import LONGLIVE_KEYS, read_config_file

    options: dict[str, tuple[argparse.Action, bool]] = {}  # key -> (action, negated)
    for action in p._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and action.dest not in ("help", "config"):
                negated = isinstance(action, argparse.BooleanOptionalAction) and opt.startswith("--no-")
                options[opt[2:].replace("-", "_")] = (action, negated)
    aliases = {"data_path": ("prompts", "prompt_file")}  # interactive's JSONL, generate's prompt list
    values, unknown, skipped = {}, [], []
    for key, (value, source) in read_config_file(path).items():
        key = next((k for k in aliases.get(key, ()) if k in options), key)
        if key not in options:
            (skipped if source in LONGLIVE_KEYS else unknown).append(source)
            continue
        if value is None:
            continue
        action, negated = options[key]
        if action.dest in values:
            raise ValueError(f"--config {path}: {source} sets --{action.dest.replace('_', '-')} twice")
        values[action.dest] = _convert(path, source, action, value, negated)
    if unknown:
        raise ValueError(
            f"--config {path}: unknown key(s) for {p.prog}: {', '.join(unknown)} "
            f"(use this command's flag names or LongLive's inference keys)"
        )
    if skipped:
        print(f"note: --config {path}: {p.prog} has no flag for {', '.join(skipped)}; ignored", file=sys.stderr)
    return values


def _convert(path: str, key: str, action: argparse.Action, value, negated: bool):
    """A file value as the flag would have made it from text (types, choices, on/off flags)."""
    flag = action.option_strings[-1] if negated else action.option_strings[0]
    if action.nargs == 0:  # store_true / store_false / BooleanOptionalAction
        if not isinstance(value, bool):
            raise ValueError(f"--config {path}: {key} must be true or false, got {value!r}")
        on = value != negated
        if isinstance(action, argparse.BooleanOptionalAction):
            return on
        if not on:
            return action.default
        return action.const
    if isinstance(value, bool):
        raise ValueError(f"--config {path}: {key} takes a value like {flag} does, got {value}")
    if isinstance(action, argparse._AppendAction):  # e.g. --prompt, once per item
        items = value if isinstance(value, list) else [value]
        return [_convert_one(path, key, action, v) for v in items]
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)  # list flags take comma-separated text
    return _convert_one(path, key, action, value)


def _convert_one(path: str, key: str, action: argparse.Action, value):
    text = str(value)
    try:
        out = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise ValueError(f"--config {path}: {key}: {e}") from None
    if action.choices is not None and out not in action.choices:
        raise ValueError(f"--config {path}: {key} {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The DiT's weights, the same flags in every command that loads the model (see ``load_model_from_args``)."""
    # --preset defaults to tiny without --model and to Wan2.1's 832x480 geometry with it.
    p.set_defaults(preset=None)
    g = p.add_argument_group("weights")
    g.add_argument("--model", help="Wan2.1-T2V model directory (original or diffusers layout)")
    g.add_argument(
        "--checkpoint",
        help="DiT weights, Wan or diffusers names (.safetensors or .pt): replace those of --model; "
        "default: random weights",
    )
    g.add_argument("--longlive-ckpt", help="LongLive longlive_base.pt: replaces the DiT weights of --model")
    g.add_argument(
        "--longlive-weights",
        default="auto",
        choices=["auto", "generator", "generator_ema", "model"],
        help="entry of --longlive-ckpt to load; auto = generator if present (LongLive's use_ema: false), "
        "else generator_ema, else model",
    )
    g.add_argument("--lora", help="peft LoRA (LongLive lora.pt) merged into the DiT weights at load")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: from the file, else alpha = rank)")
    g.add_argument("--lora-rank", type=int, help="expected LoRA rank (an error if the file differs)")


def weight_source(args):
    """The :class:`~arvid.runtime.loaders.WeightSource` of the :func:`add_model_args` flags, made once per
    run (kept on ``args``): the model directory is resolved once, for the preset, the checks and the load."""
    from arvid.runtime.loaders import WeightSource

    source = getattr(args, "_weight_source", None)
    if source is None:
        source = args._weight_source = WeightSource(
            model_dir=args.model, checkpoint=args.checkpoint, longlive_ckpt=args.longlive_ckpt,
            longlive_weights=args.longlive_weights, lora=args.lora, lora_alpha=args.lora_alpha,
            lora_rank=args.lora_rank, seed=args.seed,
        )  # fmt: skip
    return source


def model_preset(args):
    """``(preset, model files or None)`` for ``--preset`` / ``--model``: the preset's geometry with, under
    ``--model``, the model directory's DiT config."""
    source = weight_source(args)
    return source.preset(args.preset), source.files


def load_model_from_args(args, preset, *, device, dtype):
    """The DiT for the :func:`add_model_args` flags: :func:`~arvid.runtime.loaders.load_dit`, the only loader."""
    from arvid.runtime import loaders

    return loaders.load_dit(source=weight_source(args), config=preset.model, device=device, dtype=dtype)


def weights_label(args) -> str:
    """Where the DiT weights came from, for reports and metadata (:attr:`arvid.runtime.loaders.WeightSource.label`)."""
    return weight_source(args).label


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """``--sequence-parallel N`` (see :func:`sequence_parallel_from_args`)."""
    p.add_argument(
        "--sequence-parallel",
        type=positive_int,
        default=1,
        metavar="N",
        help="split every forward's tokens over N ranks (Ulysses; the heads divide by N): "
        "launch with torchrun --nproc_per_node N (default: 1, no split)",
    )


def check_sequence_parallel_options(opts, what: str = "") -> None:
    """Refuse (one line, before any load) options that sequence parallel cannot run: it runs the
    attention backends eagerly, so no engine and no CUDA graphs. ``what`` prefixes the message."""
    opts.check_sequence_parallel(f"{what}--sequence-parallel")


def sequence_parallel_from_args(args, preset, stream):
    """The sequence-parallel group for ``--sequence-parallel`` (None for 1), checked before any model loads.
    On CUDA it points ``args.device`` at this rank's GPU."""
    from arvid.runtime.devices import resolve_device
    from arvid.runtime.parallel import setup_sequence_parallel

    sp, device = setup_sequence_parallel(
        args.sequence_parallel,
        model_cfg=preset.model,
        stream=stream,
        tokens_per_frame=preset.tokens_per_frame,
        device=resolve_device(args.device),
    )
    if sp is not None:
        args.device = str(device)
    return sp
