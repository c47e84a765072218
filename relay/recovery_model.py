"""An independent, straightforward model of RFC 9002 loss recovery for one downstream connection.

The tests compare client_ingress.bpf.c / recovery.h with it field by field, so it is written the way the RFC's
appendix reads (a dict of sent packets, a list of acknowledged ranges), not the way the kernel walks its ring.
The kernel's deliberate limits are modelled explicitly: it keeps only ``RING`` packets (a packet whose ring slot
is reused leaves with no verdict, ``evicted``), detects loss by the packet threshold only (time threshold and PTO
are a user-space sweep), and has no persistent congestion or app-limited checks. Integer ns and bytes; divisions
truncate like the C code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RING = 256
K_PACKET_THRESHOLD = 3  # RFC 9002 section 6.1.1
NONE = (1 << 64) - 1
FORWARDED, USER = 1, 2
DEFAULT_MDS = 1200
DEFAULT_PASS_INTERVAL_US = 5000


@dataclass
class Sent:
    """RFC 9002 A.1.1 sent packet (what the kernel keeps in a ring slot)."""

    pn: int
    size: int
    sent_ns: int
    owner: int
    stream_id: int = 0
    stream_off: int = 0
    stream_len: int = 0
    stream_fin: int = 0
    state: str = "in_flight"  # in_flight | acked | lost


@dataclass(frozen=True)
class Ack:
    """One ACK frame, decoded: inclusive (low, high) ranges, highest first (RFC 9000 section 19.3)."""

    ranges: tuple[tuple[int, int], ...]
    ack_delay: int = 0  # the raw field, before the exponent
    ecn_ce: int | None = None  # ACK_ECN: the ECN-CE count

    @property
    def largest(self) -> int:
        return self.ranges[0][1]

    def covers(self, pn: int) -> bool:
        return any(lo <= pn <= hi for lo, hi in self.ranges)


@dataclass
class Outcome:
    """What one ACK did (the kernel's struct ack_outcome)."""

    newly_acked: list[int] = field(default_factory=list)
    lost: list[Sent] = field(default_factory=list)
    user_acked: int = 0
    rtt_sampled: bool = False


@dataclass
class Model:
    """RFC 9002 state of one connection, seeded like RecoveryState.seeded()."""

    mds: int = DEFAULT_MDS
    ack_delay_exponent: int = 3
    max_ack_delay_us: int = 25_000
    pass_interval_us: int = DEFAULT_PASS_INTERVAL_US
    sent: dict[int, Sent] = field(default_factory=dict)
    largest_acked: int | None = None
    largest_sent: int | None = None
    bytes_in_flight: int = 0
    cwnd: int = 0
    ssthresh: int = NONE
    recovery_start_ns: int = 0
    latest_rtt: int = 0
    min_rtt: int | None = None
    smoothed_rtt: int = 0
    rttvar: int = 0
    ecn_ce: int = 0
    last_pass_ns: int = 0
    acked_packets: int = 0
    acked_bytes: int = 0
    lost_packets: int = 0
    lost_bytes: int = 0
    evicted: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0
    congestion_events: int = 0

    def __post_init__(self) -> None:
        if not self.cwnd:
            self.cwnd = min(10 * self.mds, max(14720, 2 * self.mds))  # RFC 9002 B.2 kInitialWindow

    # RFC 9002 A.5 / B.4 OnPacketSent
    def on_sent(self, p: Sent) -> None:
        for q in [q for q in self.sent.values() if q.pn % RING == p.pn % RING]:
            del self.sent[q.pn]  # its ring slot is reused: it leaves with no verdict
            if q.state == "in_flight":
                self.evicted += 1
                self.bytes_in_flight -= min(q.size, self.bytes_in_flight)
        self.sent[p.pn] = p
        self.largest_sent = p.pn if self.largest_sent is None else max(self.largest_sent, p.pn)
        self.bytes_in_flight += p.size
        self.sent_packets += 1
        self.sent_bytes += p.size

    def valid(self, ack: Ack) -> bool:
        """RFC 9000 section 13.1: acknowledging a packet never sent is a PROTOCOL_VIOLATION (up, untouched)."""
        return self.largest_sent is not None and ack.largest <= self.largest_sent

    def _in_recovery(self, sent_ns: int) -> bool:  # RFC 9002 B.5 InCongestionRecovery
        return self.recovery_start_ns != 0 and sent_ns <= self.recovery_start_ns

    def _congestion_event(self, sent_ns: int, now: int) -> None:  # RFC 9002 B.6 (NewReno)
        if self._in_recovery(sent_ns):
            return
        self.recovery_start_ns = now
        self.ssthresh = self.cwnd // 2
        self.cwnd = max(self.ssthresh, 2 * self.mds)
        self.congestion_events += 1

    def _rtt_sample(self, latest: int, ack_delay: int) -> None:  # RFC 9002 section 5.3
        self.latest_rtt = latest
        if self.min_rtt is None:
            self.min_rtt = self.smoothed_rtt = latest
            self.rttvar = latest // 2
            return
        self.min_rtt = min(self.min_rtt, latest)
        adjusted = latest - ack_delay if latest >= self.min_rtt + ack_delay else latest
        self.rttvar = (3 * self.rttvar + abs(self.smoothed_rtt - adjusted)) // 4
        self.smoothed_rtt = (7 * self.smoothed_rtt + adjusted) // 8

    def _window(self) -> list[Sent]:
        """The packets the kernel's ascending walk sees: PNs within RING of the largest sent."""
        assert self.largest_sent is not None
        base = max(0, self.largest_sent - (RING - 1))
        return sorted((p for p in self.sent.values() if p.pn >= base), key=lambda p: p.pn)

    # RFC 9002 A.7 OnAckReceived (1-RTT space only, handshake confirmed)
    def on_ack(self, ack: Ack, now: int) -> Outcome:
        out = Outcome()
        if not self.valid(ack):
            return out
        app_limited = self.bytes_in_flight + self.mds <= self.cwnd  # RFC 9002 7.8: the window was not full
        self.largest_acked = ack.largest if self.largest_acked is None else max(self.largest_acked, ack.largest)
        newly = [p for p in self._window() if p.state == "in_flight" and ack.covers(p.pn)]
        if not newly:
            return out
        out.newly_acked = [p.pn for p in newly]
        out.user_acked = sum(p.owner == USER for p in newly)
        largest = self.sent.get(ack.largest)
        if largest is not None and largest in newly and now >= largest.sent_ns:
            delay = min(ack.ack_delay, 1 << 40) << min(self.ack_delay_exponent, 20)
            delay = min(delay * 1000, self.max_ack_delay_us * 1000)
            self._rtt_sample(now - largest.sent_ns, delay)
            out.rtt_sampled = True
            if ack.ecn_ce is not None and ack.ecn_ce > self.ecn_ce:  # RFC 9002 B.7 ProcessECN
                self.ecn_ce = ack.ecn_ce
                self._congestion_event(largest.sent_ns, now)
        # RFC 9002 A.10, packet threshold only
        for p in self._window():
            if p.state == "in_flight" and p not in newly and p.pn <= self.largest_acked \
                    and self.largest_acked - p.pn >= K_PACKET_THRESHOLD:
                p.state = "lost"
                self.bytes_in_flight -= min(p.size, self.bytes_in_flight)
                self.lost_packets += 1
                self.lost_bytes += p.size
                out.lost.append(p)
        if out.lost:  # RFC 9002 B.8 OnPacketsLost
            self._congestion_event(max(out.lost, key=lambda p: p.pn).sent_ns, now)
        for p in newly:  # RFC 9002 B.5 OnPacketsAcked
            p.state = "acked"
            self.bytes_in_flight -= min(p.size, self.bytes_in_flight)
            self.acked_packets += 1
            self.acked_bytes += p.size
            if self._in_recovery(p.sent_ns) or app_limited:
                continue
            if self.cwnd < self.ssthresh:
                self.cwnd += p.size
            else:
                self.cwnd += self.mds * p.size // self.cwnd
        return out

    def pass_up(self, other_frames: bool, out: Outcome, now: int) -> str | None:
        """Issue 5 part 3: the reason the packet still goes up, or None when the kernel consumed it."""
        if other_frames:
            reason: str | None = "other_frames"
        elif out.user_acked:
            reason = "user_acked"
        elif out.lost:
            reason = "loss"
        elif now - self.last_pass_ns >= self.pass_interval_us * 1000:
            reason = "periodic"
        else:
            reason = None
        if reason is not None:
            self.last_pass_ns = now
        return reason


def ranges_of(pns: set[int] | list[int]) -> tuple[tuple[int, int], ...]:
    """The ACK ranges (highest first) that acknowledge exactly ``pns``."""
    out: list[tuple[int, int]] = []
    for pn in sorted(set(pns), reverse=True):
        if out and out[-1][0] == pn + 1:
            out[-1] = (pn, out[-1][1])
        else:
            out.append((pn, pn))
    return tuple(out)
