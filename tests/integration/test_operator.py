"""The operator features end to end on loopback: `relay --config F` serving a late joiner from its cache and
refusing a subscriber without a token, while the others keep being served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.auth import token_parameter
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.quic import RequestFailed, connect
from tests.integration.relay_process import RELAY_MISSING, have_relay, running_relay
from tests.support import require

CONFIG = """
[cache]
max_groups = 3

[[auth.rule]]
namespace = "secure"
subscribe = ["let-me-in"]
"""


async def scenario(url: str, ca: str) -> None:
    pub = await connect(url, ca=ca)
    first = await connect(url, ca=ca)
    late = await connect(url, ca=ca)
    try:
        await pub.publish_namespace("live")
        await pub.publish_namespace("secure")
        track = pub.publish_track("live", "video")
        secure = pub.publish_track("secure", "video")
        sub1 = await first.subscribe("live", "video")
        await track.wait_subscribed(5)
        for g in range(5):
            for o in range(2):
                track.send_datagram(g, o, f"obj-{g}-{o}".encode() * 10, priority=7)
        got1 = [await sub1.next(5) for _ in range(10)]
        assert all(o is not None for o in got1)
        # a late joiner asking from group 3 gets groups 3 and 4 from the cache, byte-exact
        sub2 = await late.subscribe("live", "video", filter_type=M.FilterType.ABSOLUTE_START,
                                    start_location=M.Location(3, 0))  # fmt: skip
        assert sub2.ok is not None and sub2.ok.largest_location == M.Location(4, 1)
        replayed = [await sub2.next(5) for _ in range(4)]
        assert sorted((o.group_id, o.object_id, o.payload) for o in replayed if o is not None) == [
            (g, o, f"obj-{g}-{o}".encode() * 10) for g in (3, 4) for o in (0, 1)
        ]
        # no token: refused with UNAUTHORIZED; the session and the others go on
        with pytest.raises(RequestFailed) as refused:
            await late.subscribe("secure", "video")
        assert refused.value.code == E.SubscribeErrorCode.UNAUTHORIZED
        assert "let-me-in" not in refused.value.reason
        # with the token (a Token structure, section 9.2.1.1) the relay subscribes upstream for us
        late.session.subscribe((b"secure",), b"video", parameters=(token_parameter(b"let-me-in"),))
        await secure.wait_subscribed(5)
        track.send_datagram(5, 0, b"live-after", priority=7)
        for sub in (sub1, sub2):
            nxt = await sub.next(5)
            assert nxt is not None and (nxt.group_id, nxt.payload) == (5, b"live-after")
    finally:
        for c in (pub, first, late):
            await c.close()


def test_config_cache_and_auth_end_to_end(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(CONFIG)
    with running_relay(tmp_path / "state", extra=["--config", str(cfg)]) as relay:
        asyncio.run(asyncio.wait_for(scenario(relay.url, str(relay.ca)), 30))
