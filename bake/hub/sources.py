"""Where ``--base`` and ``--gates`` point: a local path is used as is; anything else is a Hub repo id.

``bake.hub.download`` (huggingface_hub and its HTTP client) is imported only for a Hub id or a revision, so
a run on local folders never loads them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bake.errors import HubError
from bake.gates.variant import list_variants

if TYPE_CHECKING:  # bake.verify imports torch; a bake on local folders never loads it
    from bake.verify.verifier import ReferenceSpec


def local_path(ref: str, revision: str | None) -> Path | None:
    """``ref`` as an existing local path (with no revision asked), else None."""
    path = Path(ref).expanduser()
    return path if revision is None and path.exists() else None


def resolve_base(ref: str, revision: str | None = None, progress: bool = True) -> Path:
    """A local base model folder, or a Hub repo downloaded (only what a bake needs) into the cache."""
    local = local_path(ref, revision)
    if local is not None:
        return local
    from bake.hub import download as hub

    return hub.resolve_base(ref, revision, progress=progress)


def resolve_gates(ref: str, variant: str | None, revision: str | None = None) -> Path:
    """A local gates path, or the cached snapshot root of a Hub gates repo holding ``variant``."""
    local = local_path(ref, revision)
    if local is not None:
        return local
    from bake.hub import download as hub

    return hub.resolve_gates(ref, variant, revision)


def gate_variant_names(ref: str, revision: str | None = None) -> list[str]:
    """Every variant a gates path or Hub repo holds (a variant folder holds itself)."""
    local = local_path(ref, revision)
    if local is None:
        from bake.hub import download as hub

        names, source = hub.list_hub_variants(ref, revision)
        if source == hub.CACHED_FOLDERS:
            raise HubError(f"--variant all: the Hub cannot be reached and the cache may hold only some variants of "
                           f"{ref} (cached: {', '.join(names) or 'none'}); name one with --variant, or run online")
        return names
    if local.is_file():
        return [local.parent.name]
    return list_variants(local) or [local.name]


def resolve_reference(spec: ReferenceSpec, progress: bool = False) -> ReferenceSpec:
    """``spec`` with its base and gates as local folders, as ``verify`` takes them: a folder that exists here is
    used; otherwise its Hub id is fetched into the cache (offline: from the cache)."""
    return replace(spec, base=_folder(spec.base, spec.base_hub_id, spec.base_revision, "--base", progress),
                   gates=_folder(spec.gates, spec.gates_hub_id, spec.gates_revision, "--gates", progress,
                                 spec.variant))


def _folder(ref: Path | str, hub_id: str | None, revision: str | None, flag: str, progress: bool,
            variant: str | None = None) -> Path:
    if Path(ref).expanduser().exists():
        return Path(ref).expanduser()
    if hub_id is None:
        raise HubError(f"the bake manifest records {flag.lstrip('-')} as the local folder {str(ref)!r}, which is not on "
                       f"this machine, and no Hub id for it; give {flag} with that folder (or its Hub repo id)")
    if flag == "--base":
        return resolve_base(hub_id, revision, progress=progress)
    return resolve_gates(hub_id, variant, revision)
