"""A recording stand-in for huggingface_hub's HfApi: every call must bind to the real method's signature."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.hf_api import ModelInfo

COMMIT_B = "b" * 40


class FakeHfApi:
    """Records calls; each call must bind to the real HfApi method's signature."""

    def __init__(self, existing_private: bool | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.private = existing_private  # None: the repo does not exist yet
        self.uploaded: list[str] = []
        self.readme: str | None = None

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
        self.contents = {op.path_in_repo: op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                         else Path(op.path_or_fileobj).read_bytes() for op in params["operations"]}
        self.uploaded = sorted(self.contents)
        self.readme = self.contents["README.md"].decode() if "README.md" in self.contents else None
        return CommitInfo(commit_url=f"https://huggingface.co/{params['repo_id']}/commit/{COMMIT_B}",
                          commit_message=params["commit_message"], commit_description="", oid=COMMIT_B)
