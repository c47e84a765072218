"""A misbehaving publisher for the classifier test: it sends OBJECT_DATAGRAMs (~900 bytes: one per packet) under a
track alias nobody subscribed to (run inside a sim node: `python -m tests.sim.rogue_pub URL CA COUNT`). Prints how
many it queued."""

from __future__ import annotations

import asyncio
import sys

from relay.moqt.objects import ObjectDatagram, encode_datagram
from relay.quic import connect

ROGUE_ALIAS = 4000  # never announced, never subscribed: 2-byte varint, like real aliases of busy relays


async def main(url: str, ca: str, count: int) -> int:
    client = await connect(url, ca=ca)
    for i in range(count):
        data = encode_datagram(ObjectDatagram(ROGUE_ALIAS, 7, i, 0x80, b"stray object" * 70))
        client.session.send_datagram(data)
        client.conn.transmit()
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)
    await client.close()
    print(count, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
