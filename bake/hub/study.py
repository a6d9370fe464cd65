"""Push a whole sweep (a study) to the Hub in one call: one repo per cut, a Collection holding them in cut order, and
every card linking the others with the study's table and its trade-off figure.

Everything is planned before anything is sent (``plan_study``): each member folder checked as ``push`` checks one
(a damaged member is named first), each repo id validated, each card rendered. Pushing (``push_study``) is
resumable: a repo that already holds exactly the planned files (same sizes; same sha256 for LFS files, same git
blob id for the others) is skipped, so a run that stopped midway is finished by running it again. On an error the
report says which repos are up, which were skipped and which are not.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from bake.errors import BakeError, HubError
from bake.hub.hub_errors import hub_errors
from bake.hub.push import Upload, commit_upload, default_commit_message, plan_upload
from bake.io.provenance import sha256_file
from bake.write.manifest import MANIFEST_NAME, public_manifest, read_manifest
from bake.write.model_card import CARD_NAME, read_eval

COLLECTION_TITLE_MAX = 60  # characters: the Hub's limit on a collection title
FIGURE_NAME = "study.png"


def is_sweep_folder(folder: Path) -> bool:
    """A sweep's output: no manifest of its own, baked folders (with one) inside."""
    folder = Path(folder)
    return folder.is_dir() and not (folder / MANIFEST_NAME).is_file() and any(
        (p / MANIFEST_NAME).is_file() for p in folder.iterdir() if p.is_dir())


@dataclass
class Member:
    """One cut of the study: its folder, the repo it goes to and what is sent."""

    name: str
    repo_id: str
    manifest: dict[str, Any]
    upload: Upload

    @property
    def off_fraction(self) -> float:
        return float(self.manifest["off_fraction"])


@dataclass
class StudyPlan:
    """Everything a study push sends, decided before the first byte leaves."""

    sweep: Path
    prefix: str
    collection: str | None
    members: list[Member]
    figure: bytes | None
    figure_note: str | None = None

    def describe(self) -> dict[str, Any]:
        """What ``--dry-run --json`` prints: every repo with its files and bytes, and the collection."""
        repos = []
        for m in self.members:
            files = m.upload.file_list()
            repos.append({"repo_id": m.repo_id, "cut": m.name, "off_fraction": m.off_fraction,
                          "layout": m.manifest["layout"], "files": files, "bytes": sum(f["bytes"] for f in files)})
        return {"sweep": self.sweep.name, "repo_prefix": self.prefix, "repos": repos,
                "collection": {"title": self.collection, "items": [m.repo_id for m in self.members]}
                if self.collection else None, "figure": FIGURE_NAME if self.figure else None,
                "figure_note": self.figure_note, "bytes": sum(r["bytes"] for r in repos)}


@dataclass
class StudyReport:
    """What a study push did: repos pushed (with their commit), skipped (already up), failed and not attempted."""

    pushed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_attempted: list[str] = field(default_factory=list)
    collection: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed and not self.not_attempted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete}


def plan_study(sweep: Path, prefix: str, collection: str | None = None) -> StudyPlan:
    """Check the sweep folder, the prefix and the collection title; plan every repo and render every card."""
    sweep = Path(sweep)
    check_prefix(prefix)
    if collection is not None and not 0 < len(collection.strip()) <= COLLECTION_TITLE_MAX:
        raise HubError(f"--collection {collection!r}: the Hub takes a title of 1 to {COLLECTION_TITLE_MAX} characters "
                       f"(this one has {len(collection.strip())}); shorten it")
    folders = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
    if not folders:
        raise HubError(f"{sweep} holds no baked folder (one with {MANIFEST_NAME}); push a sweep's output folder")
    manifests, evals = {}, {}
    for folder in folders:  # every member readable before any is planned: a damaged one is named first
        try:
            manifests[folder] = read_manifest(folder)
            evals[folder] = read_eval(folder)
        except BakeError as e:
            raise HubError(f"{folder.name} (a member of the sweep {sweep}): {e}") from e
    order = sorted(folders, key=lambda f: (manifests[f]["gates"]["variant"], manifests[f]["off_fraction"], f.name))
    repos = {f: repo_for(prefix, f.name) for f in order}
    formats = {f: _format_bytes(f) for f in order}
    figure, note = _figure(sweep, order, manifests)
    members = []
    for folder in order:
        try:
            upload = plan_upload(folder, repos[folder])
        except BakeError as e:
            raise HubError(f"{folder.name} (a member of the sweep {sweep}): {e}") from e
        card = upload.card() + study_section(folder, order, manifests, evals, formats, repos, figure is not None)
        upload.files[CARD_NAME] = card.encode()
        if figure is not None:
            upload.files[FIGURE_NAME] = figure
        members.append(Member(folder.name, repos[folder], manifests[folder], upload))
    return StudyPlan(sweep, prefix, collection, members, figure, note)


def check_prefix(prefix: str) -> None:
    """``USER/NAME``: a namespace and a repo-name stem the Hub accepts (each repo appends ``-<cut>``)."""
    if prefix.count("/") != 1:
        raise HubError(f"--repo-prefix {prefix!r}: give USER/NAME (each cut's repo is USER/NAME-<cut>)")
    try:
        validate_repo_id(f"{prefix}-x")
    except HFValidationError as e:
        raise HubError(f"--repo-prefix {prefix!r} does not make Hub repo ids ({e}); use letters, digits, '-', '_' "
                       "and '.'") from e


def repo_for(prefix: str, cut: str) -> str:
    """The repo of one cut: ``USER/NAME-<cut folder name>``, checked as the Hub checks repo ids (96 characters)."""
    repo_id = f"{prefix}-{cut}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--repo-prefix {prefix!r} with the cut {cut!r} gives {repo_id!r}, which the Hub refuses "
                       f"({e}); choose a shorter prefix") from e
    return repo_id


def study_section(folder: Path, order: list[Path], manifests: dict[Path, dict[str, Any]],
                  evals: dict[Path, dict[str, Any] | None], formats: dict[Path, list[str]], repos: dict[Path, str],
                  figure: bool) -> str:
    """The card's part about the whole study: every cut, with links, sizes per format and eval figures."""
    lines = ["", "## The study", "",
             f"This model is one cut of a study of {len(order)}: the same base and gates, baked at each cut. "
             "Each repo holds one cut; the table links them all.", ""]
    if figure:
        lines += [f"![trade-off: sizes (and verification) against the off-fraction]({FIGURE_NAME})", ""]
    sets = list(dict.fromkeys(n for e in evals.values() if e for n, i in e["sets"].items() if i["kind"] == "text"))
    head = ["cut", "variant", "off", "layout", "parameters", "checkpoint", "ONNX", "GGUF", "MLX",
            *[f"{n} change in NLL" for n in sets]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in order:
        m = manifests[f]
        name = f"**{f.name}** (this repo)" if f == folder else f"[{f.name}](https://huggingface.co/{repos[f]})"
        size = (m["sizes"].get(m["layout"]) or m["sizes"]["dense"])["params"]
        own = next((r for r in (evals[f] or {}).get("results", []) if r.get("kind") == "checkpoint"), None)
        figures = []
        for n in sets:
            value = ((own or {}).get("sets", {}).get(n) or {}).get("delta_nll")
            figures.append(f"{value:+.4f}" if isinstance(value, (int, float)) else "-")
        lines.append("| " + " | ".join([name, m["gates"]["variant"], f"{m['off_fraction']:.1%}", m["layout"],
                                         f"{size:,}", *formats[f], *figures]) + " |")
    lines += ["", "Bytes per format: the files of each (the checkpoint's safetensors; the ONNX folder's graph and "
              "weights; each GGUF file; the MLX folder's weights); - where the cut has none.", ""]
    return "\n".join(lines)


def _format_bytes(folder: Path) -> list[str]:
    def mb(n: int) -> str:
        return f"{n / 1e6:,.1f} MB" if n else "-"

    checkpoint = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    onnx = sum(p.stat().st_size for p in (folder / "onnx").glob("model.onnx*")) if (folder / "onnx").is_dir() else 0
    gguf = sum(p.stat().st_size for p in folder.glob("*.gguf"))
    mlx = sum(p.stat().st_size for p in (folder / "mlx").glob("*.safetensors")) if (folder / "mlx").is_dir() else 0
    return [mb(checkpoint), mb(onnx), mb(gguf), mb(mlx)]


def _figure(sweep: Path, order: list[Path], manifests: dict[Path, dict[str, Any]]) -> tuple[bytes | None, str | None]:
    """The study's trade-off figure (the sweep figure of its manifests) as PNG bytes, or None and why not."""
    from bake.errors import PlotError
    from bake.plots.figure import require_matplotlib, write_figure

    try:
        require_matplotlib()
    except PlotError as e:
        return None, str(e)
    from bake.plots.sweep_plot import sweep_figure, sweep_size

    outputs = [{"name": f.name, "variant": m["gates"]["variant"], "off_fraction": m["off_fraction"], "ok": True,
                "layout": m["layout"], "sizes": m["sizes"], "verification": m.get("verification"), "exit_code": 0,
                "error": None} for f in order for m in [manifests[f]]]
    report = {"out": sweep.name, "outputs": outputs}
    with tempfile.TemporaryDirectory(prefix="lambda-bake-study-") as tmp:
        path = Path(tmp) / FIGURE_NAME
        write_figure(sweep_figure(report, sweep_size(report)), path)
        return path.read_bytes(), None


def push_study(plan: StudyPlan, *, private: bool = False, api: Any = None) -> StudyReport:
    """Push every member (skipping one the Hub already holds as planned), then the Collection; stop at the first
    failure and say what is up and what is not (a rerun finishes it)."""
    api = api if api is not None else HfApi()
    report = StudyReport()
    for i, member in enumerate(plan.members):
        try:
            if already_there(api, member.upload):
                report.skipped.append(member.repo_id)
                print(f"{member.repo_id}: already holds these files, skipped", file=sys.stderr)
                continue
            report.pushed[member.repo_id] = _commit(api, member, private)
        except (BakeError, OSError) as e:
            report.failed[member.repo_id] = str(e)
            report.not_attempted = [m.repo_id for m in plan.members[i + 1:]]
            return report
    if plan.collection:
        try:
            with hub_errors(plan.prefix, None, include=None, flag="--collection", pushing=True):
                namespace = plan.prefix.split("/")[0]
                collection = api.create_collection(plan.collection, namespace=namespace, private=private,
                                                   exists_ok=True)
                for member in plan.members:
                    api.add_collection_item(collection.slug, member.repo_id, "model", exists_ok=True)
            report.collection = str(getattr(collection, "url", None) or collection.slug)
        except BakeError as e:
            report.failed["collection"] = str(e)
    return report


def _commit(api: Any, member: Member, private: bool) -> str:
    url = commit_upload(api, member.upload, private=private, revision=None, flag="--repo-prefix",
                        message=default_commit_message(public_manifest(member.manifest)))
    print(f"pushed {member.repo_id}: {url}", file=sys.stderr)
    return url


def already_there(api: Any, upload: Upload) -> bool:
    """Whether the repo holds every planned file with the same content (and no commit is needed)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.model_info(upload.repo_id, files_metadata=True)
    except RepositoryNotFoundError:
        return False
    remote = {s.rfilename: s for s in info.siblings or []}
    for name in upload.files:
        sibling = remote.get(name)
        if sibling is None or sibling.size != upload.size(name):
            return False
    for name in upload.files:  # same sizes: compare contents (the weights are hashed only now)
        sibling, data = remote[name], _content(upload, name)
        if sibling.lfs is not None:
            if sibling.lfs.sha256 != _sha256(data):
                return False
        elif sibling.blob_id != _git_blob_id(data):
            return False
    return True


def _content(upload: Upload, name: str) -> bytes | Path:
    data = upload.files[name]
    return data if data is not None else upload.folder / name


def _sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else sha256_file(data)


def _git_blob_id(data: bytes | Path) -> str:
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()  # noqa: S324 - git's object id, not security
