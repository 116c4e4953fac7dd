"""``arvid quantize``: write an INT8 / FP8 variant of the DiT to a directory (safetensors + JSON)."""

from __future__ import annotations

import sys

from ._checks import check_output_dir
from ._common import add_common_args, add_model_args, load_model_from_args, model_preset, weights_label


def add_quant_args(p) -> None:
    p.add_argument(
        "--skip",
        help="comma-separated fnmatch patterns of linear layers kept in high precision "
        "(default: text/time embeddings, time projection, head; '' for none)",
    )


def skip_patterns(args) -> tuple[str, ...] | None:
    if args.skip is None:
        return None
    return tuple(s.strip() for s in args.skip.split(",") if s.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an INT8 / FP8 variant of the DiT (safetensors + quant_config.json)",
        description="Quantize the DiT's linear layers and save the result, for `arvid quality --variant DIR` and "
        "`arvid bench --variant DIR`. The float layers kept are stored in --dtype (default: bf16, the model's "
        "release precision); sizes are reported against the whole model in BF16.",
    )
    add_common_args(p, stream=False)
    p.set_defaults(dtype="bf16")
    add_model_args(p)
    p.add_argument(
        "--scheme",
        required=True,
        choices=["int8", "int8-weight-only", "fp8"],
        help="int8: W8A8 dynamic; int8-weight-only: INT8 weights, float activations; fp8: e4m3 W8A8 row-wise",
    )
    add_quant_args(p)
    p.add_argument("--out", required=True, help="output directory (created; an existing file there is an error)")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from arvid.quant import config_for_scheme, quantize_, save_quantized
    from arvid.runtime.devices import resolve_device, resolve_dtype

    check_output_dir(args.out, "--out")  # before the model loads: a quantization is not lost at its end
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    skip = skip_patterns(args)
    config = config_for_scheme(args.scheme, **({"skip": skip} if skip is not None else {}))
    preset, _ = model_preset(args)
    model = load_model_from_args(args, preset, device=device, dtype=dtype)
    quantize_(model, config)
    meta = {"preset": preset.name, "checkpoint": weights_label(args)}
    doc = save_quantized(model, args.out, metadata=meta)
    s = doc["sizes"]
    print(
        f"wrote {args.out}: {args.scheme}, {len(doc['layers'])} layers quantized, {len(doc['skipped'])} kept in "
        f"{doc['compute_dtype']}; {s['stored_bytes']:,} bytes in memory, file {s['file_bytes']:,} bytes; "
        f"the whole model in BF16: {s['bf16_bytes']:,} bytes (ratio {s['ratio']:.3f})"
    )
    if doc["compute_dtype"] != "bfloat16":
        print(
            f"note: the layers kept in high precision are stored in {doc['compute_dtype']}; "
            "leave --dtype at bf16 for a file comparable with BF16",
            file=sys.stderr,
        )
    return 0
