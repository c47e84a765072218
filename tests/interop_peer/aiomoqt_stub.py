"""A one-session MoQT peer framed entirely by aiomoqt 0.5.3 (over qh3): the far end for `relay pub` / `relay sub`.

Run with .venv-interop/bin/python. It is not a relay: it answers CLIENT_SETUP; when a client announces a namespace
it SUBSCRIBEs to `--track` in it and parses every object that arrives with aiomoqt's deserializers; when a client
SUBSCRIBEs, it answers SUBSCRIBE_OK and sends objects (datagrams, then one subgroup stream) and PUBLISH_DONE. It
records everything as JSON lines in --log, so a test compares our tools' bytes with an independent parser's view.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiomoqt.messages import (
    ObjectDatagram,
    ObjectHeader,
    PublishNamespaceOk,
    ServerSetup,
    SubgroupHeader,
    Subscribe,
    SubscribeDone,
    SubscribeOk,
)
from aiomoqt.types import GroupOrder
from aiomoqt.utils.buffer import Buffer
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import serve
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.events import DatagramFrameReceived, StreamDataReceived

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from relay.tools.media import PRIORITY_I, PRIORITY_P, Frame, build_payload  # noqa: E402

ALIAS_TO_CLIENT = 5  # the alias we choose for objects we send (draft-14: the publisher side chooses)
VERSION = 0xFF00000E


class Stub(QuicConnectionProtocol):
    def __init__(self, *args: Any, log: Path, track: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_path, self.track = log, track
        self.control = b""
        self.uni: dict[int, bytes] = {}

    def log(self, **record: Any) -> None:
        with self.log_path.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def send_control(self, sid: int, message: Any) -> None:
        self._quic.send_stream_data(sid, message.serialize().data)
        self.transmit()

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, StreamDataReceived):
            if event.stream_id % 4 == 0:
                self.control += event.data
                self.on_control(event.stream_id)
            else:
                self.uni[event.stream_id] = self.uni.get(event.stream_id, b"") + event.data
                if event.end_stream:
                    self.on_subgroup_stream(self.uni.pop(event.stream_id))
        elif isinstance(event, DatagramFrameReceived):
            buf = Buffer(data=event.data)
            dtype = buf.pull_uint_var()
            obj = ObjectDatagram.deserialize(buf, len(event.data), type_val=dtype)
            self.log(kind="object", datagram=True, alias=obj.track_alias, group=obj.group_id, object=obj.object_id,
                     priority=obj.publisher_priority, size=len(obj.payload),
                     sha256=hashlib.sha256(obj.payload).hexdigest())

    def on_subgroup_stream(self, data: bytes) -> None:
        buf = Buffer(data=data)
        header = SubgroupHeader.deserialize(buf, buf.pull_uint_var())
        prev = None
        while buf.tell() < len(data):
            obj = ObjectHeader.deserialize(buf, len(data), extensions_present=header.extensions_present,
                                           prev_object_id=prev)
            prev = obj.object_id
            self.log(kind="object", datagram=False, alias=header.track_alias, group=header.group_id,
                     subgroup=header.subgroup_id, object=obj.object_id, priority=header.publisher_priority,
                     size=len(obj.payload), sha256=hashlib.sha256(obj.payload).hexdigest())

    def on_control(self, sid: int) -> None:
        while self.control:
            buf = Buffer(data=self.control)
            mtype, length = buf.pull_uint_var(), buf.pull_uint16()
            start = buf.tell()
            if len(self.control) < start + length:
                return
            self.control = self.control[start + length:]
            self.log(kind="control", type=mtype)
            if mtype == 0x20:  # CLIENT_SETUP -> SERVER_SETUP with MAX_REQUEST_ID 100
                self.send_control(sid, ServerSetup(selected_version=VERSION, parameters={2: 100}))
            elif mtype == 0x06:  # PUBLISH_NAMESPACE -> OK, then SUBSCRIBE to our track in it
                rid = buf.pull_uint_var()
                namespace = tuple(buf.pull_bytes(buf.pull_uint_var()) for _ in range(buf.pull_uint_var()))
                self.send_control(sid, PublishNamespaceOk(request_id=rid))
                self.send_control(sid, Subscribe(request_id=1, track_namespace=namespace, track_name=self.track,
                                                 priority=128, group_order=1, forward=1, filter_type=2,
                                                 parameters={}))
            elif mtype == 0x03:  # SUBSCRIBE -> OK, objects, PUBLISH_DONE
                rid = buf.pull_uint_var()
                self.send_control(sid, SubscribeOk(request_id=rid, track_alias=ALIAS_TO_CLIENT, expires=0,
                                                   group_order=GroupOrder.ASCENDING, content_exists=0,
                                                   parameters={}))
                asyncio.ensure_future(self.feed(sid, rid))
            elif mtype == 0x04:  # SUBSCRIBE_OK from the publisher: note the alias it chose
                rid, alias = buf.pull_uint_var(), buf.pull_uint_var()
                self.log(kind="subscribe_ok", request_id=rid, alias=alias)
            elif mtype == 0x0B:  # PUBLISH_DONE
                rid, status, count = buf.pull_uint_var(), buf.pull_uint_var(), buf.pull_uint_var()
                self.log(kind="publish_done", request_id=rid, status=status, stream_count=count)
            elif mtype == 0x09:
                self.log(kind="publish_namespace_done")

    async def feed(self, sid: int, rid: int) -> None:
        """Two groups of three objects as datagrams, a third group on one subgroup stream, then PUBLISH_DONE."""
        seq = 0
        for group in range(2):
            for obj in range(3):
                prio = PRIORITY_I if obj == 0 else PRIORITY_P
                payload = build_payload(Frame(seq, group, obj, 300, prio), time.time_ns(), b"stub")
                dgram = ObjectDatagram(track_alias=ALIAS_TO_CLIENT, group_id=group, object_id=obj,
                                       publisher_priority=prio, payload=payload)
                self._quic.send_datagram_frame(dgram.serialize().data)
                self.transmit()
                self.log(kind="sent", group=group, object=obj, priority=prio, size=len(payload),
                         sha256=hashlib.sha256(payload).hexdigest(), datagram=True)
                seq += 1
                await asyncio.sleep(0.01)
        header = SubgroupHeader(track_alias=ALIAS_TO_CLIENT, group_id=2, subgroup_id=0, publisher_priority=PRIORITY_I)
        usid = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(usid, header.serialize().data)
        for obj in range(3):
            payload = build_payload(Frame(seq, 2, obj, 300, PRIORITY_I), time.time_ns(), b"stub")
            self._quic.send_stream_data(usid, header.next_object(payload=payload).data, obj == 2)
            self.log(kind="sent", group=2, object=obj, priority=PRIORITY_I, size=len(payload),
                     sha256=hashlib.sha256(payload).hexdigest(), datagram=False)
            seq += 1
        self.transmit()
        await asyncio.sleep(0.05)
        self.send_control(sid, SubscribeDone(request_id=rid, status_code=2, stream_count=1, reason="stub done"))


async def main(args: argparse.Namespace) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=["moq-00"], max_datagram_frame_size=65536)
    config.load_cert_chain(args.cert, args.key)
    server = await serve("127.0.0.1", args.port, configuration=config,
                         create_protocol=lambda *a, **k: Stub(*a, log=args.log, track=args.track.encode(), **k))
    print("ready", flush=True)
    try:
        await asyncio.sleep(args.lifetime)
    finally:
        server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--track", default="video")
    p.add_argument("--lifetime", type=float, default=30.0)
    asyncio.run(main(p.parse_args()))
