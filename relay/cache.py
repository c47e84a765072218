"""Per-track object cache: the latest groups of each track, kept as the publisher's bytes.

Why raw bytes: the relay forwards without parsing (see `relay.relay.Forwarder`), and a cached copy must be re-sent
byte-exact (draft-14 section 8: a relay must not change object fields). So a subgroup stream is kept as the list of
chunks that arrived on it (no copy, no parse on the hot path) and a datagram as its bytes; both remember where the
Track Alias sits so a replay only splices the subscriber's alias in. Objects are parsed only when someone asks for
them (FETCH, the largest location for a late joiner), which is rare compared with forwarding.

Bounds: per track at most `max_groups` groups and `max_bytes`; all tracks together at most `max_total_bytes`.
Eviction is by whole groups, oldest first (a partial group would be a silent gap); a group that alone outgrows a
budget is dropped and not cached any further.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from relay.moqt import objects as O
from relay.moqt.errors import MoqtError
from relay.moqt.messages import Location
from relay.moqt.varint import NeedMoreData, decode_varint


@dataclass(frozen=True)
class CacheLimits:
    """Cache sizes (configuration file section [cache]); max_groups 0 disables caching."""

    max_groups: int = 4  # per track
    max_bytes: int = 8 << 20  # per track
    max_total_bytes: int = 64 << 20  # all tracks


@dataclass(eq=False, slots=True)
class CachedStream:
    """One subgroup stream (section 10.4.2) as received: chunks from stream offset 0, header included."""

    home: CachedGroup
    alias_offset: int
    alias_length: int
    publisher_priority: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bool = False  # FIN seen

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def with_alias(self, alias_bytes: bytes) -> bytes:
        """The stream's bytes so far with the Track Alias replaced (the only field a relay may rewrite)."""
        data = self.data()
        return data[: self.alias_offset] + alias_bytes + data[self.alias_offset + self.alias_length :]


@dataclass(eq=False, slots=True)
class CachedDatagram:
    """One OBJECT_DATAGRAM (section 10.3.1) as received."""

    group: int
    object_id: int
    data: bytes
    alias_offset: int
    alias_length: int

    def with_alias(self, alias_bytes: bytes) -> bytes:
        d = self.data
        return d[: self.alias_offset] + alias_bytes + d[self.alias_offset + self.alias_length :]


@dataclass(eq=False, slots=True)
class CachedGroup:
    group: int
    seq: int  # arrival order across all tracks (global eviction: oldest first)
    streams: list[CachedStream] = field(default_factory=list)
    datagrams: list[CachedDatagram] = field(default_factory=list)
    size: int = 0
    evicted: bool = False


@dataclass(frozen=True)
class FetchedObject:
    """One decoded object for a FETCH stream (section 10.4.4); datagram objects use their Object ID as subgroup."""

    location: Location
    subgroup_id: int
    publisher_priority: int
    payload: bytes
    extensions: O.Extensions
    status: int

    def fetch_object(self) -> O.FetchObject:
        return O.FetchObject(
            self.location.group, self.subgroup_id, self.location.object, self.publisher_priority,
            self.payload, self.extensions, self.status,
        )  # fmt: skip


def datagram_location(data: bytes, alias_end: int) -> tuple[int, int]:
    """(group, object id) of a datagram whose Track Alias ends at `alias_end` (section 10.3.1: bit2 = no Object ID)."""
    dtype = data[0]
    group, pos = decode_varint(data, alias_end)
    if dtype in O.DATAGRAM_STATUS_TYPES or not dtype & 0x04:
        return group, decode_varint(data, pos)[0]
    return group, 0


def stream_group(first: bytes, alias_end: int) -> int:
    """The Group ID of a subgroup header (it follows the Track Alias, section 10.4.2)."""
    return decode_varint(first, alias_end)[0]


class TrackCache:
    """The cached groups of one track, oldest first."""

    def __init__(self, owner: ObjectCache) -> None:
        self._owner = owner
        self.groups: OrderedDict[int, CachedGroup] = OrderedDict()
        self.size = 0
        self.floor = -1  # the newest group evicted so far: it and older ones are never cached again

    def _group(self, group: int) -> CachedGroup | None:
        g = self.groups.get(group)
        if g is None:
            if group <= self.floor:
                return None  # never re-open a group that is gone: it would be cached with a hole
            late = bool(self.groups) and group < next(reversed(self.groups))
            g = self.groups[group] = CachedGroup(group, next(self._owner.seq))
            if late:  # an older group arrived after a newer one: keep oldest first
                self.groups = OrderedDict(sorted(self.groups.items()))
            lim = self._owner.limits
            while len(self.groups) > lim.max_groups:
                self._evict_oldest()
            if group not in self.groups:
                return None
        return g

    def add_datagram(self, data: bytes, alias_offset: int, alias_length: int) -> None:
        try:
            group, oid = datagram_location(data, alias_offset + alias_length)
        except (NeedMoreData, IndexError):
            return
        g = self._group(group)
        if g is not None:
            g.datagrams.append(CachedDatagram(group, oid, data, alias_offset, alias_length))
            self._grew(g, len(data))

    def open_stream(
        self, first: bytes, alias_offset: int, alias_length: int, publisher_priority: int
    ) -> CachedStream | None:
        """Start caching a subgroup stream; returns the entry that later chunks are appended to (None: not cached)."""
        try:
            group = stream_group(first, alias_offset + alias_length)
        except NeedMoreData:
            return None
        g = self._group(group)
        if g is None:
            return None
        st = CachedStream(g, alias_offset, alias_length, publisher_priority)
        g.streams.append(st)
        self.append(st, first, False)
        return st

    def append(self, st: CachedStream, data: bytes, fin: bool) -> None:
        if st.home.evicted:
            return  # the group left the cache: stop holding its bytes
        if data:
            st.chunks.append(data)
            st.size += len(data)
        st.done = st.done or fin
        if data:
            self._grew(st.home, len(data))

    def _grew(self, g: CachedGroup, n: int) -> None:
        g.size += n
        self.size += n
        self._owner.total += n
        lim = self._owner.limits
        while self.size > lim.max_bytes and self.groups:
            self._evict_oldest()
        self._owner.enforce_total()

    def _evict_oldest(self) -> None:
        _, g = self.groups.popitem(last=False)
        _release(g)
        self.floor = max(self.floor, g.group)
        self.size -= g.size
        self._owner.total -= g.size
        self._owner.evicted_groups += 1

    def oldest_seq(self) -> int | None:
        return next(iter(self.groups.values())).seq if self.groups else None

    # --- reading (rare: late joiners, FETCH) -------------------------------------------------------------------------

    def objects(self, start: Location, end: Location | None = None) -> Iterator[FetchedObject]:
        """Decoded objects with start <= location < end (end None = no end), in ascending group order and, inside a
        group, ascending object order. Streams stop at their last complete object."""
        for gid, g in list(self.groups.items()):
            if gid < start.group or (end is not None and gid > end.group):
                continue
            found = list(_decode_group(g))
            found.sort(key=lambda o: o.location.object)
            for obj in found:
                if obj.location >= start and (end is None or obj.location < end):
                    yield obj

    def largest(self) -> Location | None:
        """The largest cached location (section 1.4.1 ordering), parsing only the newest non-empty group."""
        for g in reversed(list(self.groups.values())):
            best = max((o.location for o in _decode_group(g)), default=None)
            if best is not None:
                return best
        return None


def _release(g: CachedGroup) -> None:
    """Mark a group evicted and free its bytes now. A CachedStream points at its group (`home`) and the group lists
    its streams: a reference cycle, which only a full (generation 2) GC pass frees, and that pass is rare in a
    long-running relay; the evicted groups' chunks piled up at the publisher's rate (1.4 MiB/s at 16 Mbit/s).
    Emptying the lists breaks the cycle, so reference counting frees them at once. A forwarder still holding one of
    these streams (`_UpStream.cached`) sees `home.evicted` and appends nothing."""
    g.evicted = True
    for st in g.streams:
        st.chunks = []
    g.streams = []
    g.datagrams = []


def _decode_group(g: CachedGroup) -> Iterator[FetchedObject]:
    for d in g.datagrams:
        try:
            obj = O.decode_datagram(d.data)
        except MoqtError:
            continue
        loc = Location(obj.group_id, obj.object_id)
        yield FetchedObject(
            loc, obj.object_id, obj.publisher_priority, obj.payload, obj.extensions, obj.status
        )
    for st in g.streams:
        parser = O.DataStreamParser()
        try:
            events = parser.feed(st.data())
        except MoqtError:
            continue
        for ev in events:
            if isinstance(ev, O.SubgroupObject):
                sub = parser.subgroup_id
                yield FetchedObject(
                    Location(g.group, ev.object_id), sub if sub is not None else 0, st.publisher_priority,
                    ev.payload, ev.extensions, ev.status,
                )  # fmt: skip


class ObjectCache:
    """Every track's cache under one global byte budget; keys are whatever the relay uses for a track."""

    def __init__(self, limits: CacheLimits | None = None) -> None:
        self.limits = limits or CacheLimits()
        self.tracks: dict[Hashable, TrackCache] = {}
        self.total = 0
        self.evicted_groups = 0
        self.seq = itertools.count()

    @property
    def enabled(self) -> bool:
        return self.limits.max_groups > 0 and self.limits.max_bytes > 0 and self.limits.max_total_bytes > 0

    def track(self, key: Hashable) -> TrackCache:
        tc = self.tracks.get(key)
        if tc is None:
            tc = self.tracks[key] = TrackCache(self)
        return tc

    def get(self, key: Hashable) -> TrackCache | None:
        return self.tracks.get(key)

    def forget(self, key: Hashable) -> None:
        tc = self.tracks.pop(key, None)
        if tc is not None:
            self.total -= tc.size
            for g in tc.groups.values():
                _release(g)

    def enforce_total(self) -> None:
        """Evict the globally oldest group until the total budget holds (few tracks: a scan is fine)."""
        while self.total > self.limits.max_total_bytes:
            oldest: TrackCache | None = None
            best = -1
            for tc in self.tracks.values():
                seq = tc.oldest_seq()
                if seq is not None and (oldest is None or seq < best):
                    oldest, best = tc, seq
            if oldest is None:
                return
            oldest._evict_oldest()
