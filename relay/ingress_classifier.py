"""The ingress classifier on the relay port (bpf/src/classifier.bpf.c, XDP): objects of tracks nobody subscribed to
are dropped before they cost the host anything (issue "relay --hal netronome": on an NFP it runs on the card; under
`--hal sim` the same object runs in host XDP, native mode on the veth).

It needs two things from the relay: the upstream connection IDs (the same ones `server_ingress` gets) and the set
of (upstream connection, track alias) pairs with at least one subscriber, kernel-served or not. `ClassifierHooks`
keeps the second from the relay's subscription events.

Side effect, by design of any pre-endpoint drop: the dropped QUIC packets are never acknowledged, so the publisher's
loss detection counts them as lost. A publisher only sends objects of subscribed tracks, so this concerns stray
objects (after UNSUBSCRIBE, or a misbehaving peer), not the media path.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpf.loader import BpfObject, PinDir, build_path
from bpf.structs import CidKey, IngressConfig, IngressStat, TrackKey, UpstreamConn
from hal.netronome.offload import xdp_set
from relay.moqt.session import MoqtSession
from relay.relay import Downstream, Track

XDP_FLAGS_DRV_MODE = 1 << 2  # native XDP (veth supports it); linux/if_link.h


@dataclass
class ClassifierHooks:
    """`relay.relay.FastPathHooks` that mirror "this upstream track has subscribers" into the `subscribed` map."""

    subscribed: Any  # the classifier's `subscribed` map (bpf.loader.Map or a dict-backed fake)
    upstream_of: Callable[[MoqtSession], int | None]
    _count: Counter[tuple[int, int]] = field(default_factory=Counter)
    _key_of: dict[Track, tuple[int, int]] = field(default_factory=dict)

    def _key(self, track: Track) -> tuple[int, int] | None:
        if track in self._key_of:
            return self._key_of[track]
        conn_id = self.upstream_of(track.publisher)
        if conn_id is None or track.alias is None:
            return None
        self._key_of[track] = (conn_id, track.alias)
        return self._key_of[track]

    def subscriber_added(self, track: Track, sub: Downstream) -> None:
        key = self._key(track)
        if key is None:
            return
        self._count[key] += 1
        if self._count[key] == 1:
            self.subscribed.update(TrackKey(conn_id=key[0], alias=key[1]), 1)

    def subscriber_removed(self, track: Track, sub: Downstream) -> None:
        key = self._key_of.get(track)
        if key is None or self._count[key] == 0:
            return
        self._count[key] -= 1
        if self._count[key] == 0:
            self._forget(track, key)

    def track_ended(self, track: Track) -> None:
        key = self._key_of.get(track)
        if key is not None:
            self._forget(track, key)

    def session_closed(self, session: MoqtSession) -> None:
        for track in [t for t in self._key_of if t.publisher is session]:
            self.track_ended(track)

    def _forget(self, track: Track, key: tuple[int, int]) -> None:
        del self._count[key]
        self._key_of.pop(track, None)
        self.subscribed.delete(TrackKey(conn_id=key[0], alias=key[1]))


@dataclass
class IngressClassifier:
    """The loaded classifier, attached in native XDP mode to the relay port (of the current network namespace)."""

    obj: BpfObject
    ifindex: int
    attached: bool = False

    @classmethod
    def start(cls, ifindex: int, port: int, dcid_len: int, pins: PinDir | None = None) -> IngressClassifier:
        obj = BpfObject.load(build_path("classifier"), pin_dir=pins)
        try:
            cfg = IngressConfig()
            cfg.port[0], cfg.dcid_len[0] = port, dcid_len
            obj.maps["classifier_cfg"].update(0, cfg)
            self = cls(obj, ifindex)
            xdp_set(ifindex, obj.programs["classifier"].fd, XDP_FLAGS_DRV_MODE)
            self.attached = True
            return self
        except BaseException:
            obj.close()
            raise

    def hooks(self, upstream_of: Callable[[MoqtSession], int | None]) -> ClassifierHooks:
        return ClassifierHooks(self.obj.maps["subscribed"], upstream_of)

    def add_upstream(self, cid: bytes, conn_id: int) -> None:
        self.obj.maps["classifier_conns"].update(CidKey.of(cid), UpstreamConn(conn_id=conn_id))

    def remove_upstream(self, cid: bytes) -> None:
        self.obj.maps["classifier_conns"].delete(CidKey.of(cid))

    def counters(self) -> dict[str, int]:
        stats = self.obj.maps["classifier_stats"]
        return {s.name: int(stats.lookup(int(s)) or 0) for s in IngressStat if s < IngressStat.ST_CLONED}

    def stop(self) -> None:
        if self.attached:
            with contextlib.suppress(Exception):
                xdp_set(self.ifindex, -1, XDP_FLAGS_DRV_MODE)
            self.attached = False
        self.obj.close()


@dataclass
class CompositeHooks:
    """Several `FastPathHooks` behind the relay's one hook slot, called in order."""

    parts: list[Any]

    def subscriber_added(self, track: Track, sub: Downstream) -> None:
        for p in self.parts:
            p.subscriber_added(track, sub)

    def subscriber_removed(self, track: Track, sub: Downstream) -> None:
        for p in self.parts:
            p.subscriber_removed(track, sub)

    def track_ended(self, track: Track) -> None:
        for p in self.parts:
            p.track_ended(track)

    def session_closed(self, session: MoqtSession) -> None:
        for p in self.parts:
            p.session_closed(session)
