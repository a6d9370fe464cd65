"""huggingface_hub's errors (all ``OSError`` subclasses) as ``HubError``: the repo, the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2  # huggingface_hub's HTTP client (a dependency of huggingface_hub>=2.0)
from huggingface_hub import constants, is_offline_mode
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from bake.errors import HubError


@contextmanager
def hub_errors(
    repo_id: str, revision: str | None, *, include: list[str] | None, flag: str, pushing: bool = False
) -> Iterator[None]:
    """Turn huggingface_hub's errors into HubError naming the repo, the problem and the fix."""
    rev = revision or "main"
    fetch = f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "".join(
        f' --include "{p}"' for p in include or []) + "`"
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be reached on the Hub; unset it"
                       + (" to push" if pushing else "")) from e
    except IncompleteSnapshotError as e:
        raise HubError(
            f"the cached copy of {repo_id} (revision {rev}) is incomplete and the Hub cannot be reached "
            f"({_offline_reason()}). Fix: download it again with network access ({fetch}), or pass a local "
            "folder"
        ) from e
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} is not a local path, so it was taken as a Hub repo id, but it (revision {rev}) is "
            f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {_offline_reason()}. "
            f"Fix: run once with network access, or fetch it with {fetch}, or pass a local folder to {flag}"
        ) from e
    except GatedRepoError as e:
        raise HubError(f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id} and log in "
                       "(`hf auth login` or HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} is neither a local path nor a Hub repo you can see (not found, or private and your "
            "token has no access); check the spelling and log in with `hf auth login` or HF_TOKEN"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id} has no revision {rev!r}; give an existing branch, tag or commit") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubError(f"the Hub refused {repo_id}: not logged in or the token is invalid; run "
                           "`hf auth login` or set HF_TOKEN") from e
        if status == 403:
            raise HubError(f"the Hub refused {repo_id}: your token lacks {'write ' if pushing else ''}access "
                           "to it; check the token's permissions (`hf auth whoami`)") from e
        raise HubError(f"the Hub returned an error for {repo_id} (HTTP {status}): {e}") from e
    except httpx2.TransportError as e:
        raise HubError(f"could not reach the Hub for {repo_id} ({type(e).__name__}: {e}); check your "
                       "connection or proxy, or pass a local folder") from e


def _offline_reason() -> str:
    return ("HF_HUB_OFFLINE is set, so nothing is downloaded" if is_offline_mode()
            else "the Hub could not be reached")
