"""A recording stand-in for huggingface_hub's HfApi: every call must bind to the real method's signature."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.hf_api import Collection, ModelInfo


def git_blob_sha1(data: bytes) -> str:
    """git's object id of a file (the Hub's ``blobId``), written here, not taken from the code under test."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


COMMIT_B = "b" * 40


class FakeHfApi:
    """Records calls; each call must bind to the real HfApi method's signature."""

    def __init__(self, existing_private: bool | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.private = existing_private  # None: the repo does not exist yet
        self.uploaded: list[str] = []
        self.readme: str | None = None
        self.repos: dict[str, dict[str, bytes]] = {}  # what each repo holds after its commits
        self.collections: dict[str, dict[str, Any]] = {}  # slug -> title and items in order
        self.fail_commit_to: str | None = None  # a repo whose commit fails (an upload broken midway)

    def _record(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = inspect.signature(getattr(HfApi, name)).bind(None, *args, **kwargs)
        bound.apply_defaults()
        params = {k: v for k, v in bound.arguments.items() if k != "self"}
        self.calls.append((name, params))
        return params

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        params = self._record("create_repo", *args, **kwargs)
        if self.private is None:
            self.private = bool(params["private"])
        return f"https://huggingface.co/{params['repo_id']}"

    def repo_info(self, *args: Any, **kwargs: Any) -> ModelInfo:
        params = self._record("repo_info", *args, **kwargs)
        return ModelInfo(id=params["repo_id"], private=self.private)

    def create_branch(self, *args: Any, **kwargs: Any) -> None:
        self._record("create_branch", *args, **kwargs)

    def create_commit(self, *args: Any, **kwargs: Any) -> CommitInfo:
        params = self._record("create_commit", *args, **kwargs)
        if self.fail_commit_to == params["repo_id"]:
            import httpx2 as httpx  # huggingface_hub 2.x's HTTP client
            from huggingface_hub.errors import HfHubHTTPError

            url = f"https://huggingface.co/api/models/{params['repo_id']}/commit/main"
            raise HfHubHTTPError(f"500 Server Error for {params['repo_id']} (a test's stand-in for a broken upload)",
                                 response=httpx.Response(500, request=httpx.Request("POST", url)))
        self.contents = {op.path_in_repo: op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                         else Path(op.path_or_fileobj).read_bytes() for op in params["operations"]}
        self.repos.setdefault(params["repo_id"], {}).update(self.contents)
        self.uploaded = sorted(self.contents)
        self.readme = self.contents["README.md"].decode() if "README.md" in self.contents else None
        return CommitInfo(commit_url=f"https://huggingface.co/{params['repo_id']}/commit/{COMMIT_B}",
                          commit_message=params["commit_message"], commit_description="", oid=COMMIT_B)

    def model_info(self, *args: Any, **kwargs: Any) -> ModelInfo:
        """The repo's files as the Hub lists them: LFS files (weights, images) with their sha256, the rest with their
        git blob id."""
        from huggingface_hub.errors import RepositoryNotFoundError
        params = self._record("model_info", *args, **kwargs)
        if params["repo_id"] not in self.repos:
            import httpx2 as httpx  # huggingface_hub 2.x's HTTP client

            url = f"https://huggingface.co/api/models/{params['repo_id']}"
            raise RepositoryNotFoundError(f"404 {params['repo_id']}",
                                          response=httpx.Response(404, request=httpx.Request("GET", url)))
        siblings = []  # as the Hub's API sends them (ModelInfo parses them into RepoSibling / BlobLfsInfo)
        for name, data in self.repos[params["repo_id"]].items():
            lfs = name.endswith((".safetensors", ".gguf", ".png", ".data", ".onnx")) or len(data) > 10 << 20
            siblings.append({"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data),
                             "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                             if lfs else None})
        return ModelInfo(id=params["repo_id"], private=self.private, siblings=siblings)

    def create_collection(self, *args: Any, **kwargs: Any) -> Collection:
        params = self._record("create_collection", *args, **kwargs)
        slug = f"{params['namespace']}/{params['title'].lower().replace(' ', '-')}-0123456789abcdef01234567"
        self.collections.setdefault(slug, {"title": params["title"], "items": []})
        return Collection(slug=slug, title=params["title"], owner={"name": params["namespace"]}, items=[],
                          lastUpdated="2026-12-07T00:00:00.000Z", position=0, private=params["private"],
                          theme="green", upvotes=0)

    def add_collection_item(self, *args: Any, **kwargs: Any) -> None:
        params = self._record("add_collection_item", *args, **kwargs)
        items = self.collections[params["collection_slug"]]["items"]
        if params["item_id"] not in items:
            items.append(params["item_id"])
