"""Namespace routing: which publisher serves a track namespace, by whole tuple fields, longest prefix first.

Draft-14 section 2.4.1 / 8: namespaces are tuples and prefixes are whole fields, so (b"foo",) matches
(b"foo", b"bar") but never (b"foobar",). A lookup walks the track's namespace from its full length down to one
field - at most 32 dict probes - instead of scanning every published namespace.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Owner = TypeVar("Owner")
Namespace = tuple[bytes, ...]


class NamespaceTaken(Exception):
    """Another owner already published exactly this namespace."""


class Router(Generic[Owner]):
    """Published namespaces -> the owner (a publisher session) that published each."""

    def __init__(self) -> None:
        self._routes: dict[Namespace, Owner] = {}

    def add(self, namespace: Namespace, owner: Owner) -> None:
        """Publish `namespace` for `owner`; re-publishing by the same owner is a no-op."""
        current = self._routes.get(namespace)
        if current is not None and current != owner:
            raise NamespaceTaken(namespace)
        self._routes[namespace] = owner

    def remove(self, namespace: Namespace, owner: Owner) -> bool:
        """Withdraw; False when `owner` did not publish it."""
        if self._routes.get(namespace) == owner:
            del self._routes[namespace]
            return True
        return False

    def remove_owner(self, owner: Owner) -> list[Namespace]:
        """Withdraw everything `owner` published (its session went away); returns what was withdrawn."""
        gone = [ns for ns, o in self._routes.items() if o == owner]
        for ns in gone:
            del self._routes[ns]
        return gone

    def lookup(self, namespace: Namespace) -> tuple[Namespace, Owner] | None:
        """The longest published prefix of `namespace` (by whole fields) and its owner, or None."""
        routes = self._routes
        for n in range(len(namespace), 0, -1):
            prefix = namespace[:n]
            owner = routes.get(prefix)
            if owner is not None:
                return prefix, owner
        return None

    def namespaces(self, owner: Owner | None = None) -> list[Namespace]:
        return [ns for ns, o in self._routes.items() if owner is None or o == owner]

    def __len__(self) -> int:
        return len(self._routes)
