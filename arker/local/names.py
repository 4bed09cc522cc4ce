"""VM names: which names are reserved, and which VM a fork-by-name's ``from`` means.

The rule (documented in ``docs/wire-extensions.md``):

1. The base images' names (``arkuntu`` and any other name the server's own org
   gives a VM) are reserved: no org may give a VM such a name, compared without
   regard to case, and ``from`` with such a name always means the server's image.
2. Pinned with ``source_org_id`` or ``source_org_name`` (the platform's fields),
   ``from`` names a VM of that org: any of the caller's own when it is the caller's
   org, else a public one. Both given must name the same org.
3. Unpinned, the caller's own VM of that name wins (the newest).
4. Else the public VM of that name of its *earliest publisher*: the org whose oldest
   public VM of that name is the oldest of all. A name another org publishes later
   never shadows it; to fork the later one, pin its org.
"""

from __future__ import annotations

from .errors import ApiError
from .store import SYSTEM_ORG, Store, VmRow

BASE_IMAGE_NAME = "arkuntu"
"""The public base image every server serves, owned by `SYSTEM_ORG`."""


class Names:
    """Name checks and lookups against the store.

    Args:
        store: VM rows.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def reserved(self) -> set[str]:
        """The reserved names, case-folded."""
        return {n.casefold() for n in self._store.names_of_org(SYSTEM_ORG) | {BASE_IMAGE_NAME}}

    def check_new_name(self, org_id: str, name: str | None) -> None:
        """Refuse giving a VM of ``org_id`` a reserved name.

        Raises:
            ApiError: 409 ``conflict`` naming the reserved name.
        """
        if org_id == SYSTEM_ORG or name is None:
            return
        if name.strip().casefold() in self.reserved():
            raise ApiError("conflict", f"the name {name!r} is reserved for a base image")

    def resolve(
        self, org_id: str, name: str, source_org_id: str | None, source_org_name: str | None
    ) -> VmRow | None:
        """The VM ``org_id`` means by ``name`` (see the module's rule), or None."""
        if source_org_name is not None:
            named = self._store.org_id_named(source_org_name)
            if named is None or source_org_id not in (None, named):
                return None
            source_org_id = named
        if name.casefold() in self.reserved():
            if source_org_id not in (None, SYSTEM_ORG):
                return None
            return self._store.find_public(self._base_name(name), SYSTEM_ORG)
        if source_org_id is not None:
            if source_org_id == org_id:
                return self._store.find_own(org_id, name)
            return self._store.find_public(name, source_org_id)
        own = self._store.find_own(org_id, name)
        if own is not None:
            return own
        return self._store.find_public(name, None)

    def _base_name(self, name: str) -> str:
        for real in self._store.names_of_org(SYSTEM_ORG) | {BASE_IMAGE_NAME}:
            if real.casefold() == name.casefold():
                return real
        return name
