"""aiomoqt 0.5.3 as publisher or subscriber with an AUTHORIZATION TOKEN, for the relay's token interop case.

Run with .venv-interop/bin/python. aiomoqt puts `parameters={ParamType.AUTH_TOKEN: token}` on the wire as draft-14's
Token structure (Alias Type USE_VALUE 0x3, Token Type 0, the token as Token Value: aiomoqt/messages/base.py
_serialize_params), so the relay checks exactly what a draft-14 peer sends.

  --role pub: PUBLISH_NAMESPACE with the token; prints "announced" or "refused CODE REASON"; answers the relay's
              SUBSCRIBE, sends --objects datagrams (framed by aiomoqt's ObjectDatagram) and PUBLISH_DONE, "done N".
  --role sub: SUBSCRIBE with the token; prints "subscribed ALIAS" or "refused CODE REASON"; then counts the
              datagrams of that alias (parsed by aiomoqt) until PUBLISH_DONE or --duration: "received N".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any
from urllib.parse import urlparse

from aiomoqt.client import MOQTClient
from aiomoqt.messages import ObjectDatagram, PublishNamespaceError, Subscribe, SubscribeDone, SubscribeError
from aiomoqt.types import GroupOrder, MOQTMessageType, ParamType, SubscribeDoneCode
from aiomoqt.utils.buffer import Buffer
from qh3.quic.events import DatagramFrameReceived


def say(line: str) -> None:
    print(line, flush=True)


async def run(args: argparse.Namespace) -> int:
    url = urlparse(args.url)
    params = {ParamType.AUTH_TOKEN: args.token.encode()} if args.token is not None else {}
    loop = asyncio.get_running_loop()
    subscribed: asyncio.Future[Subscribe] = loop.create_future()
    done = asyncio.Event()

    async def on_subscribe(session: Any, msg: Subscribe) -> None:
        session.subscribe_ok(msg, expires=0, group_order=GroupOrder.ASCENDING, content_exists=0)
        if not subscribed.done():
            subscribed.set_result(msg)

    async def on_done(session: Any, msg: SubscribeDone) -> None:
        done.set()

    client = MOQTClient(url.hostname, url.port, endpoint=url.path.lstrip("/"), use_quic=True, verify_tls=False)
    client.register_handler(MOQTMessageType.SUBSCRIBE, on_subscribe)
    client.register_handler(MOQTMessageType.PUBLISH_DONE, on_done)
    async with client.connect() as session:
        await session.client_session_init()
        if args.role == "pub":
            reply = await session.publish_namespace(namespace=args.namespace, parameters=params, wait_response=True)
            if isinstance(reply, PublishNamespaceError):
                say(f"refused {reply.error_code} {reply.reason}")
                session.close()
                return 0
            say("announced")
            sub = await asyncio.wait_for(subscribed, args.duration)
            await asyncio.sleep(0.3)
            for obj in range(args.objects):
                dgram = ObjectDatagram(track_alias=sub.track_alias, group_id=0, object_id=obj,
                                       publisher_priority=1, payload=b"token-case-%d" % obj)
                session._quic.send_datagram_frame(dgram.serialize().data)
                session.transmit()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            session.send_control_message(SubscribeDone(
                request_id=sub.request_id, status_code=SubscribeDoneCode.TRACK_ENDED, stream_count=0,
                reason="token case done").serialize())
            say(f"done {args.objects}")
            await asyncio.sleep(0.5)
        else:
            got: list[int] = []
            alias: list[int] = []
            original = session.quic_event_received

            def count(event: Any) -> None:  # aiomoqt 0.5.3's raw-QUIC datagram reader is defective: parse here
                if isinstance(event, DatagramFrameReceived) and alias:
                    buf = Buffer(data=event.data)
                    obj = ObjectDatagram.deserialize(buf, len(event.data), type_val=buf.pull_uint_var())
                    if obj.track_alias == alias[0]:
                        got.append(obj.object_id)
                    return
                original(event)

            session.quic_event_received = count
            reply = await session.subscribe(namespace=args.namespace, track_name=args.track, parameters=params,
                                            wait_response=True)
            if isinstance(reply, SubscribeError):
                say(f"refused {reply.error_code} {reply.reason}")
                session.close()
                return 0
            alias.append(reply.track_alias)
            say(f"subscribed {reply.track_alias}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), args.duration)
            await asyncio.sleep(0.2)
            say(f"received {len(got)}")
        session.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="moqt://HOST:PORT")
    p.add_argument("--role", choices=["pub", "sub"], required=True)
    p.add_argument("--token", help="AUTHORIZATION TOKEN value (omit: no token)")
    p.add_argument("--namespace", default="interop/token")
    p.add_argument("--track", default="video")
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--duration", type=float, default=10.0)
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
