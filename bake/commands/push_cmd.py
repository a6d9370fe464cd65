"""``lambda-bake push``: upload a baked folder to the Hugging Face Hub in one commit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bake.commands import COMMANDS
from bake.commands.output import add_output_args, emit_json
from bake.errors import HubError
from bake.io.paths import BAKED_FOLDER, path_arg


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push",
        help=COMMANDS["push"].help,
        description=(
            "Upload DIR (the output of `lambda-bake bake`) to a Hub model repo in one commit, creating "
            "the repo and the branch if needed. The token comes from HF_TOKEN or `hf auth login`. The manifests "
            "go as their public copies (no local paths) and the model card is rendered for the repo (its "
            "run instructions name it); a text file that still holds a path of this machine stops the push. "
            "A sweep's folder (every cut and variant of one `bake`) goes as a study: --repo-prefix USER/NAME "
            "gives each cut its repo USER/NAME-<cut>, in one commit each; --collection TITLE gathers them in a "
            "Hub Collection in cut order; every card links the others with the study's table and figure. A "
            "study push is resumable: a repo that already holds the same files is skipped."
        ),
    )
    p.add_argument("folder", metavar="DIR", type=path_arg("folder", BAKED_FOLDER, accept_files=(".gguf",)),
                   help="baked model folder (with its exports), a sweep's folder, or a .gguf file to publish alone")
    p.add_argument("--repo-id", metavar="USER/NAME", help="target model repo (one baked folder or GGUF)")
    p.add_argument("--repo-prefix", metavar="USER/NAME",
                   help="a sweep's folder: each cut goes to USER/NAME-<cut> (e.g. USER/NAME-chat_mean-p3)")
    p.add_argument("--collection", metavar="TITLE",
                   help="a sweep's folder: gather its repos in a Hub Collection of this title, in cut order")
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
    from bake.hub.study import is_sweep_folder

    if is_sweep_folder(args.folder):
        return run_study(args)
    if args.repo_prefix or args.collection:
        raise HubError(f"{args.folder} is one baked folder: give --repo-id USER/NAME (--repo-prefix and --collection "
                       "are for a sweep's folder of cuts)")
    if not args.repo_id:
        raise HubError("give --repo-id USER/NAME, the repo to push to")
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


def run_study(args: argparse.Namespace) -> int:
    """A sweep's folder: plan every cut's repo first (a damaged member or a bad prefix stops it before any upload)."""
    from bake.hub.study import plan_study, push_study

    if args.repo_id or args.revision or args.commit_message or args.allow_unbaked:
        raise HubError(f"{args.folder} is a sweep's folder: give --repo-prefix USER/NAME (each cut its own repo); "
                       "--repo-id, --revision, --commit-message and --allow-unbaked are for one folder")
    if not args.repo_prefix:
        raise HubError(f"{args.folder} is a sweep's folder of cuts: give --repo-prefix USER/NAME (each cut goes to "
                       "USER/NAME-<cut>)")
    plan = plan_study(args.folder, args.repo_prefix, args.collection)
    if args.dry_run:
        described = plan.describe() | {"dry_run": True}
        if args.json:
            emit_json(described)
        else:
            for repo in described["repos"]:
                print(f"{repo['bytes']:>14,}  {repo['repo_id']}  ({len(repo['files'])} files; {repo['cut']}, "
                      f"{repo['off_fraction']:.1%} off, {repo['layout']})")
            where = f"; collection {args.collection!r}" if args.collection else ""
            print(f"{described['bytes']:>14,}  bytes in {len(described['repos'])} repos{where}; nothing uploaded "
                  "(dry run)")
            if plan.figure_note:
                print(f"figure not drawn: {plan.figure_note}")
        return 0
    report = push_study(plan, private=args.private)
    if args.json:
        emit_json(report.to_dict())
    else:
        for repo, url in report.pushed.items():
            print(f"pushed   {repo}  {url}")
        for repo in report.skipped:
            print(f"up already  {repo}")
        for repo, why in report.failed.items():
            print(f"FAILED   {repo}: {why}")
        for repo in report.not_attempted:
            print(f"not yet  {repo}")
        if report.collection:
            print(f"collection: {report.collection}")
    if not report.complete:
        print("the study is not complete on the Hub; run the same command again to finish it", file=sys.stderr)
        return 2
    return 0
