"""``arvid download``: fetch the public Wan2.1-T2V-1.3B and LongLive-1.3B checkpoints (huggingface_hub)."""

from __future__ import annotations

import sys
from pathlib import Path

REPOS = {
    "wan": "Wan-AI/Wan2.1-T2V-1.3B",
    "longlive": "Efficient-Large-Model/LongLive-1.3B",
}


def register(sub) -> None:
    p = sub.add_parser("download", help="fetch Wan2.1-T2V-1.3B and LongLive-1.3B from the Hugging Face Hub")
    p.add_argument("--dir", default="checkpoints", help="destination folder (default: checkpoints)")
    p.add_argument(
        "--only", choices=sorted(REPOS), action="append", help="fetch only this one (repeatable; default: both)"
    )
    p.set_defaults(func=cmd_download)


def cmd_download(args) -> int:
    from arvid.runtime.files import path_error
    from arvid.runtime.optional import require

    from ._checks import check_output_dir

    snapshot_download = require("huggingface_hub", "snapshot_download", purpose="downloading weights")
    root = Path(args.dir)
    check_output_dir(root, "--dir")  # gigabytes are not fetched into a folder that cannot hold them
    paths = {}
    for key in args.only or list(REPOS):
        repo = REPOS[key]
        dest = root / repo.split("/")[1]
        print(f"downloading {repo} -> {dest} ...", file=sys.stderr)
        try:
            paths[key] = Path(snapshot_download(repo_id=repo, local_dir=str(dest)))
        except OSError as e:
            if e.errno is None:  # the hub client's own errors (network, not found): in its words
                raise ValueError(f"could not download {repo}: {type(e).__name__}: {e}") from None
            if e.filename is None:  # a full disk mid-download names no file: the destination, then
                raise path_error(e, dest, "cannot download into") from e
            raise  # a read-only folder and the like: arvid.cli.main's one line naming the path
        except Exception as e:  # network, auth: one clear line, not a stack trace
            raise ValueError(f"could not download {repo}: {type(e).__name__}: {e}") from None
        print(f"{repo}: {paths[key]}")
    if "wan" in paths:
        cmd = f"arvid generate --model {paths['wan']}"
        if "longlive" in paths:
            ll = paths["longlive"] / "models"
            cmd += f" --longlive-ckpt {ll / 'longlive_base.pt'} --lora {ll / 'lora.pt'}"
        print(f"next: {cmd} --prompt '...' --seconds 10 --out video.mp4", file=sys.stderr)
    return 0
