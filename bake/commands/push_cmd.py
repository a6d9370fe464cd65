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
            "the repo and the branch if needed. The token comes from HF_TOKEN or `hf auth login`. The manifests "
            "go as their public copies (no local paths) and the model card is rendered for the repo (its "
            "run instructions name it); a text file that still holds a path of this machine stops the push."
        ),
    )
    p.add_argument("folder", metavar="DIR", type=path_arg("folder", BAKED_FOLDER, accept_files=(".gguf",)),
                   help="baked model folder (with its exports), or a .gguf file to publish alone")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="target model repo")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing public repo is refused)")
    p.add_argument("--revision", metavar="BRANCH", default=None,
                   help="target branch, created if missing (default: main)")
    p.add_argument("--commit-message", metavar="MSG", default=None,
                   help="default: names the variant, cut and layout from bake_manifest.json")
    p.add_argument("--allow-unbaked", action="store_true",
                   help="push a folder that lacks bake_manifest.json or config.json + safetensors weights")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be uploaded (files, sizes, which are rewritten, the model card and its "
                        "metadata, checked as the Hub parses it) and upload nothing: no network, no token")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bake.hub.push import plan_upload, push_folder

    if args.dry_run:
        plan = plan_upload(args.folder, args.repo_id, args.allow_unbaked).describe()
        if args.json:
            emit_json(plan | {"dry_run": True})
        else:
            for f in plan["files"]:
                print(f"{f['bytes']:>14,}  {f['path']}" + ("  (rewritten for the Hub)" if f["rewritten"] else ""))
            print(f"{plan['bytes']:>14,}  bytes in {len(plan['files'])} files to {plan['repo_id']}; nothing uploaded "
                  "(dry run)\n")
            print(plan["card"])
        return 0

    url = push_folder(
        args.folder, args.repo_id, private=args.private, revision=args.revision,
        commit_message=args.commit_message, allow_unbaked=args.allow_unbaked,
    )
    if args.json:
        emit_json({
            "repo_id": args.repo_id, "revision": args.revision or "main", "private": args.private,
            "commit_url": url, "files": sorted(plan_upload(args.folder, args.repo_id, args.allow_unbaked).files),
        })
    else:
        print(url)
    return 0
