"""``lambda-bake push``: upload a baked folder to the Hugging Face Hub in one commit."""

from __future__ import annotations

import argparse
from typing import Any

from bake.commands import COMMANDS
from bake.commands.output import add_output_args, emit_json
from bake.io.paths import BAKED_FOLDER, path_arg


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push",
        help=COMMANDS["push"].help,
        description=(
            "Upload DIR (the output of `lambda-bake bake`) to a Hub model repo in one commit, creating "
            "the repo and the branch if needed. The token comes from HF_TOKEN or `hf auth login`."
        ),
    )
    p.add_argument("folder", metavar="DIR", type=path_arg("folder", BAKED_FOLDER), help="baked model folder")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="target model repo")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing public repo is refused)")
    p.add_argument("--revision", metavar="BRANCH", default=None,
                   help="target branch, created if missing (default: main)")
    p.add_argument("--commit-message", metavar="MSG", default=None,
                   help="default: names the variant, cut and layout from bake_manifest.json")
    p.add_argument("--allow-unbaked", action="store_true",
                   help="push a folder that lacks bake_manifest.json or config.json + safetensors weights")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bake.hub.push import push_folder, upload_file_list

    url = push_folder(
        args.folder, args.repo_id, private=args.private, revision=args.revision,
        commit_message=args.commit_message, allow_unbaked=args.allow_unbaked,
    )
    if args.json:
        emit_json({
            "repo_id": args.repo_id, "revision": args.revision or "main", "private": args.private,
            "commit_url": url, "files": upload_file_list(args.folder),
        })
    else:
        print(url)
    return 0
