"""An independent MoQT publisher: aiomoqt 0.5.3 builds every byte, qh3 carries it.

Run with .venv-interop/bin/python. aiomoqt's control plane works over raw QUIC, so it announces the namespace and
answers the relay's SUBSCRIBE itself; its raw-QUIC *data* path is defective in 0.5.3 (an extra byte before
datagrams, stream publishing needs WebTransport), so objects are serialized with aiomoqt's ObjectDatagram /
SubgroupHeader classes and handed to qh3's connection directly.

Prints one line per milestone on stdout ("announced", "subscribed ALIAS", "done N") so a test can follow it, and
writes what it sent (group, object, priority, sha256 of the payload) as JSON for a byte-exact comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from aiomoqt.client import MOQTClient
from aiomoqt.messages import (
    ObjectDatagram,
    PublishNamespaceError,
    SubgroupHeader,
    Subscribe,
    SubscribeDone,
    Unsubscribe,
)
from aiomoqt.types import (
    SUBGROUP_ID_EXPLICIT,
    SUBGROUP_ID_FIRST_OBJ,
    SUBGROUP_ID_ZERO,
    GroupOrder,
    MOQTMessageType,
    SubscribeDoneCode,
)

# The payload format is ours (header with seq/ids/CRC) so that `relay sub` can check it; the framing is aiomoqt's.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from relay.tools.media import PRIORITY_I, PRIORITY_P, Frame, build_payload  # noqa: E402

# Every subgroup-header encoding a draft-14 peer may use (section "Subgroup Header", types 0x10-0x1D): the relay
# must accept all of them. Group g uses _SUBGROUP_MODES[g % 3], with the end-of-group bit on odd groups.
_SUBGROUP_MODES = (SUBGROUP_ID_ZERO, SUBGROUP_ID_FIRST_OBJ, SUBGROUP_ID_EXPLICIT)


def say(line: str) -> None:
    print(line, flush=True)


async def publish(args: argparse.Namespace) -> int:
    url = urlparse(args.url)
    if url.scheme != "moqt" or not url.hostname or not url.port:
        print(f"bad url {args.url!r}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    subscribed: asyncio.Future[Subscribe] = loop.create_future()
    unsubscribed = asyncio.Event()

    async def on_subscribe(session, msg: Subscribe) -> None:  # type: ignore[no-untyped-def]
        wanted = tuple(p.encode() for p in args.namespace.split("/"))
        if tuple(msg.track_namespace) != wanted or msg.track_name != args.track.encode():
            session.subscribe_error(msg.request_id, 0x4, "track does not exist")
            return
        session.subscribe_ok(msg, expires=0, group_order=GroupOrder.ASCENDING, content_exists=0)
        if not subscribed.done():
            subscribed.set_result(msg)

    async def on_unsubscribe(session, msg: Unsubscribe) -> None:  # type: ignore[no-untyped-def]
        unsubscribed.set()

    client = MOQTClient(url.hostname, url.port, endpoint=url.path.lstrip("/"), use_quic=True, verify_tls=False)
    client.register_handler(MOQTMessageType.SUBSCRIBE, on_subscribe)
    client.register_handler(MOQTMessageType.UNSUBSCRIBE, on_unsubscribe)
    sent: list[dict[str, object]] = []
    rng = random.Random(args.seed)
    async with client.connect() as session:
        await session.client_session_init()
        reply = await session.publish_namespace(namespace=args.namespace, wait_response=True)
        if isinstance(reply, PublishNamespaceError):
            print(f"PUBLISH_NAMESPACE_ERROR {reply.error_code}: {reply.reason}", file=sys.stderr)
            return 1
        say("announced")
        try:
            sub = await asyncio.wait_for(subscribed, args.subscribe_timeout)
        except TimeoutError:
            print("no SUBSCRIBE from the relay", file=sys.stderr)
            return 1
        alias = sub.track_alias
        say(f"subscribed {alias}")
        await asyncio.sleep(args.start_delay)
        quic = session._quic
        seq = 0
        streams = 0
        for group in range(args.groups):
            header: SubgroupHeader | None = None
            stream_id = -1
            for obj in range(args.objects):
                if unsubscribed.is_set():
                    break
                prio = PRIORITY_I if obj == 0 else PRIORITY_P
                size = args.size * (4 if obj == 0 else 1)
                payload = build_payload(Frame(seq, group, obj, size, prio), time.time_ns(), None, rng)
                last = obj == args.objects - 1
                if args.mode == "datagram":
                    dgram = ObjectDatagram(
                        track_alias=alias, group_id=group, object_id=obj, publisher_priority=prio,
                        payload=payload, end_of_group=last,
                    )
                    quic.send_datagram_frame(dgram.serialize().data)
                else:
                    if header is None:
                        mode = _SUBGROUP_MODES[group % 3]
                        header = SubgroupHeader(
                            track_alias=alias, group_id=group,
                            subgroup_id=None if mode == SUBGROUP_ID_FIRST_OBJ else 0,
                            publisher_priority=prio, end_of_group=bool(group % 2), subgroup_id_mode=mode,
                        )
                        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
                        quic.send_stream_data(stream_id, header.serialize().data, False)
                        streams += 1
                    prio = header.publisher_priority  # one priority per subgroup stream
                    quic.send_stream_data(stream_id, header.next_object(payload=payload).data, last)
                session.transmit()
                sent.append({
                    "group": group, "object": obj, "priority": prio,
                    "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
                })
                seq += 1
                await asyncio.sleep(args.interval)
        await asyncio.sleep(0.2)  # let the last stream bytes be acknowledged before saying the track ended
        # PUBLISH_DONE (draft-14 control message 0x0B): status TRACK_ENDED, and how many streams were opened.
        done = SubscribeDone(
            request_id=sub.request_id, status_code=SubscribeDoneCode.TRACK_ENDED, stream_count=streams,
            reason="interop publisher finished",
        )
        session.send_control_message(done.serialize())
        if args.json:
            Path(args.json).write_text(json.dumps({"track_alias": alias, "mode": args.mode, "objects": sent}))
        say(f"done {len(sent)}")
        await asyncio.sleep(args.linger)
        session.publish_namespace_done(namespace=session._make_namespace_tuple(args.namespace))
        await asyncio.sleep(0.1)
        session.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="moqt://HOST:PORT")
    p.add_argument("--namespace", default="interop/aiomoqt")
    p.add_argument("--track", default="video")
    p.add_argument("--mode", choices=["datagram", "stream"], default="datagram")
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--objects", type=int, default=10, help="objects per group")
    p.add_argument("--size", type=int, default=200, help="P-frame bytes (I-frame: 4x)")
    p.add_argument("--interval", type=float, default=0.002, help="seconds between objects")
    p.add_argument("--start-delay", type=float, default=0.3)
    p.add_argument("--subscribe-timeout", type=float, default=10.0)
    p.add_argument("--linger", type=float, default=0.5, help="seconds to stay connected after PUBLISH_DONE")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    return asyncio.run(publish(args))


if __name__ == "__main__":
    sys.exit(main())
