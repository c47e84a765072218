"""Our draft-14 bytes against an independent implementation: aiomoqt 0.5.3's serializers, run in its own venv
(.venv-interop cannot be imported here), must produce exactly the bytes our encoder does, and ours must decode them.

One subprocess serves the whole table, so the test costs well under a second after the interpreter starts."""

from __future__ import annotations

import json
import subprocess

import pytest

from relay.moqt import (
    DRAFT_14,
    ClientSetup,
    ControlMessage,
    ControlStreamParser,
    DataStreamEvent,
    DataStreamParser,
    FetchHeader,
    FetchObject,
    FilterType,
    GoAway,
    GroupOrder,
    Location,
    MaxRequestId,
    ObjectDatagram,
    ObjectStatus,
    PublishDone,
    PublishNamespace,
    PublishNamespaceDone,
    ServerSetup,
    SubgroupHeader,
    SubgroupIdMode,
    SubgroupObject,
    SubgroupStreamWriter,
    Subscribe,
    SubscribeError,
    SubscribeOk,
    decode_datagram,
    encode_control,
    encode_datagram,
    encode_fetch_header,
    encode_fetch_object,
)
from tests.support import REPO, require

INTEROP_PYTHON = REPO / ".venv-interop" / "bin" / "python"

# name -> aiomoqt expression producing bytes (evaluated in the interop venv)
AIOMOQT_SCRIPT = r"""
import json, logging
logging.disable(logging.CRITICAL)
from aiomoqt.messages import *
from aiomoqt.types import GroupOrder, ObjectStatus

def b(x):
    return bytes(x.data) if hasattr(x, "data") else bytes(x)

def subgroup():
    hdr = SubgroupHeader(track_alias=2, group_id=5, subgroup_id=7, publisher_priority=0x80,
                         extensions_present=True, end_of_group=True, subgroup_id_mode=2)
    out = b(hdr.serialize())
    out += b(hdr.next_object(payload=b"a", extensions={2: 9}))
    out += b(hdr.next_object(payload=b"bc"))
    out += b(hdr.end_group())
    return out

def subgroup_zero():
    hdr = SubgroupHeader(track_alias=300, group_id=70000, subgroup_id=0, publisher_priority=1,
                         extensions_present=False, end_of_group=False, subgroup_id_mode=0)
    return b(hdr.serialize()) + b(hdr.next_object(payload=b"xyz"))

rows = {
    "client_setup": ClientSetup(versions=[0xff00000e], parameters={2: 100, 1: b"/moq"}).serialize(),
    "server_setup": ServerSetup(selected_version=0xff00000e, parameters={2: 16}).serialize(),
    "goaway": GoAway(new_session_uri="moqt://relay:4443/x").serialize(),
    "max_request_id": MaxSubscribeId(request_id=64).serialize(),
    "subscribe": Subscribe(request_id=2, track_namespace=(b"live", b"cam"), track_name=b"video", priority=128,
                           group_order=1, forward=1, filter_type=2, parameters={2: 5000}).serialize(),
    "subscribe_range": Subscribe(request_id=4, track_namespace=(b"a",), track_name=b"t", priority=0, group_order=2,
                                 forward=0, filter_type=4, start_group=10, start_object=3, end_group=20,
                                 parameters={}).serialize(),
    "subscribe_ok": SubscribeOk(request_id=2, track_alias=9, expires=0, group_order=GroupOrder(1), content_exists=1,
                                largest_group_id=5, largest_object_id=7, parameters={}).serialize(),
    "subscribe_error": SubscribeError(request_id=2, error_code=4, reason="no track").serialize(),
    "publish_done": SubscribeDone(request_id=2, status_code=2, stream_count=3, reason="bye").serialize(),
    "publish_namespace": PublishNamespace(request_id=1, namespace=(b"live", b"cam"), parameters={}).serialize(),
    "publish_namespace_done": PublishNamespaceDone(namespace=(b"live",)).serialize(),
    "datagram": ObjectDatagram(track_alias=2, group_id=5, object_id=1, publisher_priority=0x80,
                               extensions={2: 7, 11: b"ab"}, payload=b"x", end_of_group=True).serialize(),
    "datagram_id0": ObjectDatagram(track_alias=2, group_id=5, object_id=0, publisher_priority=3,
                                   payload=b"y").serialize(),
    "datagram_status": ObjectDatagramStatus(track_alias=2, group_id=5, object_id=9, publisher_priority=3,
                                            status=ObjectStatus.END_OF_GROUP).serialize(),
    "subgroup": subgroup(),
    "subgroup_zero": subgroup_zero(),
    "fetch": b(FetchHeader(request_id=8).serialize()) + b(FetchObject(group_id=1, subgroup_id=0, object_id=2,
               publisher_priority=3, extensions={}, payload=b"ab").serialize()),
}
print(json.dumps({k: b(v).hex() for k, v in rows.items()}))
"""

EXT_HEADER = SubgroupHeader(2, 5, 0x80, SubgroupIdMode.EXPLICIT, 7, True, True)
ZERO_HEADER = SubgroupHeader(300, 70000, 1, SubgroupIdMode.ZERO, 0, False, False)
CONTROL: dict[str, ControlMessage] = {
    "client_setup": ClientSetup((DRAFT_14,), ((2, 100), (1, b"/moq"))),
    "server_setup": ServerSetup(DRAFT_14, ((2, 16),)),
    "goaway": GoAway("moqt://relay:4443/x"),
    "max_request_id": MaxRequestId(64),
    "subscribe": Subscribe(
        2,
        (b"live", b"cam"),
        b"video",
        128,
        GroupOrder.ASCENDING,
        True,
        FilterType.LARGEST_OBJECT,
        parameters=((2, 5000),),
    ),  # fmt: skip
    "subscribe_range": Subscribe(
        4, (b"a",), b"t", 0, GroupOrder.DESCENDING, False, FilterType.ABSOLUTE_RANGE, Location(10, 3), 20
    ),  # fmt: skip
    "subscribe_ok": SubscribeOk(2, 9, 0, GroupOrder.ASCENDING, Location(5, 7)),
    "subscribe_error": SubscribeError(2, 4, "no track"),
    "publish_done": PublishDone(2, 2, 3, "bye"),
    "publish_namespace": PublishNamespace(1, (b"live", b"cam")),
    "publish_namespace_done": PublishNamespaceDone((b"live",)),
}
DATAGRAMS = {
    "datagram": ObjectDatagram(2, 5, 1, 0x80, b"x", ((2, 7), (11, b"ab")), end_of_group=True),
    "datagram_id0": ObjectDatagram(2, 5, 0, 3, b"y", explicit_object_id=False),
    "datagram_status": ObjectDatagram(2, 5, 9, 3, status=ObjectStatus.END_OF_GROUP),
}
STREAMS: dict[str, list[DataStreamEvent]] = {
    "subgroup": [
        EXT_HEADER,
        SubgroupObject(0, b"a", ((2, 9),)),
        SubgroupObject(1, b"bc"),
        SubgroupObject(2, status=ObjectStatus.END_OF_GROUP),
    ],  # fmt: skip
    "subgroup_zero": [ZERO_HEADER, SubgroupObject(0, b"xyz")],
    "fetch": [FetchHeader(8), FetchObject(1, 0, 2, 3, b"ab")],
}


def _encode_stream(events: list[DataStreamEvent]) -> bytes:
    out = b""
    writer: SubgroupStreamWriter | None = None
    for ev in events:
        if isinstance(ev, SubgroupHeader):
            writer = SubgroupStreamWriter(ev)
            out += writer.header_bytes()
        elif isinstance(ev, SubgroupObject):
            assert writer is not None
            out += writer.object_bytes(ev)
        elif isinstance(ev, FetchHeader):
            out += encode_fetch_header(ev)
        else:
            out += encode_fetch_object(ev)
    return out


@pytest.fixture(scope="module")
def aiomoqt_bytes() -> dict[str, bytes]:
    require(
        INTEROP_PYTHON.exists(), "the interop venv .venv-interop with aiomoqt 0.5.3 (run `make interop-venv`)"
    )
    proc = subprocess.run(
        [str(INTEROP_PYTHON), "-c", AIOMOQT_SCRIPT], capture_output=True, text=True, timeout=60
    )
    require(
        proc.returncode == 0 or "No module named" not in proc.stderr, "aiomoqt importable in .venv-interop"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {k: bytes.fromhex(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.interop
@pytest.mark.parametrize("name", list(CONTROL))
def test_control_bytes_match_aiomoqt(aiomoqt_bytes: dict[str, bytes], name: str) -> None:
    theirs = aiomoqt_bytes[name]
    assert encode_control(CONTROL[name]).hex() == theirs.hex()
    assert ControlStreamParser().feed(theirs) == [CONTROL[name]]


@pytest.mark.interop
@pytest.mark.parametrize("name", list(DATAGRAMS))
def test_datagram_bytes_match_aiomoqt(aiomoqt_bytes: dict[str, bytes], name: str) -> None:
    theirs = aiomoqt_bytes[name]
    assert encode_datagram(DATAGRAMS[name]).hex() == theirs.hex()
    assert decode_datagram(theirs) == DATAGRAMS[name]


@pytest.mark.interop
@pytest.mark.parametrize("name", list(STREAMS))
def test_stream_bytes_match_aiomoqt(aiomoqt_bytes: dict[str, bytes], name: str) -> None:
    theirs = aiomoqt_bytes[name]
    assert _encode_stream(STREAMS[name]).hex() == theirs.hex()
    parser = DataStreamParser()
    assert parser.feed(theirs) == STREAMS[name]
    parser.end()
