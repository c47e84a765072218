"""The soak's client side (issue #10, item 1): idle sessions plus subscribe/unsubscribe/reconnect churn.

A module of its own, run as a child process, because the sim soak (tests/sim/test_soak_sim.py) must place its
clients in a simulated client namespace (`ip netns exec`), which the test process is not in; the loopback soak
(tests/integration/test_soak.py) runs the same module, so both variants drive the relay identically:

    python -m tests.integration.soak_clients --url moqt://HOST:PORT --ca CA --seconds 100 --json churn.json

- `--idle` sessions that never make a request, only PING (often enough to outlive the relay's idle timeout);
- churn: a client connects, subscribes, reads, unsubscribes, subscribes again, then either closes or (every third
  one) vanishes without a CONNECTION_CLOSE, so the relay finds out at its idle timeout; and again.

It writes a JSON report (`Churn`) when `--seconds` are over; every failure is recorded there, the test asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from relay.quic import MoqtClient, RequestFailed, connect

NAMESPACE = "soak/cam1"
TRACK = "video"


@dataclass
class Churn:
    cycles: int = 0
    vanished: int = 0
    objects: int = 0
    refused: int = 0
    idle_sessions: int = 0
    errors: list[str] = field(default_factory=list)


async def idle(url: str, ca: str, count: int, stop_at: float, churn: Churn) -> None:
    """Sessions that never make a request: PING every second (the relay's idle timeout is seconds)."""
    clients = [await connect(url, ca=ca) for _ in range(count)]
    churn.idle_sessions = len(clients)
    try:
        uid = 0
        while time.monotonic() < stop_at:
            uid += 1
            for c in clients:
                c.conn._quic.send_ping(uid)
                c.conn.transmit()
            await asyncio.sleep(1.0)
    finally:
        for c in clients:
            await c.close()


async def churn_loop(url: str, ca: str, stop_at: float, churn: Churn) -> None:
    """Connect, subscribe/read/unsubscribe twice, then close or vanish; until `stop_at`."""
    while time.monotonic() < stop_at:
        churn.cycles += 1
        client: MoqtClient | None = None
        try:
            client = await connect(url, ca=ca)
            for _ in range(2):  # subscribe, read, unsubscribe, and once more in the same session
                sub = await client.subscribe(NAMESPACE, TRACK)
                for _ in range(5):
                    if await sub.next(5) is not None:
                        churn.objects += 1
                await client.unsubscribe(sub)
            if churn.cycles % 3 == 0:  # vanish: no CONNECTION_CLOSE, the relay finds out at its idle timeout
                client.conn.transmit = lambda: None  # type: ignore[method-assign]  # no more packets, no timer
                client._transport.close()
                churn.vanished += 1
                client = None
        except RequestFailed:
            churn.refused += 1  # the publisher is not announced yet (start) or gone (end)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on: the soak must see every failure
            churn.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                await client.close()
        await asyncio.sleep(0.3)


async def run(url: str, ca: str, seconds: float, idle_sessions: int) -> Churn:
    churn = Churn()
    stop_at = time.monotonic() + seconds
    results = await asyncio.gather(idle(url, ca, idle_sessions, stop_at, churn), churn_loop(url, ca, stop_at, churn),
                                   return_exceptions=True)  # fmt: skip
    churn.errors += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return churn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--idle", type=int, default=20, help="idle sessions (PING only)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    args = parser.parse_args()
    churn = asyncio.run(run(args.url, args.ca, args.seconds, args.idle))
    args.json.write_text(json.dumps(asdict(churn)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
