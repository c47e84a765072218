"""relay/recovery_model.py on hand-checked RFC 9002 cases (no root): the model the BPF tests trust must itself
be right."""

from __future__ import annotations

from relay.recovery_model import FORWARDED, NONE, RING, USER, Ack, Model, Sent, ranges_of

MS = 1_000_000


def sent(m: Model, pns: range, size: int = 1000, at: int = 0, owner: int = FORWARDED) -> None:
    for pn in pns:
        m.on_sent(Sent(pn, size, at, owner))


def test_ranges_of() -> None:
    assert ranges_of({1, 2, 3, 7, 9, 10}) == ((9, 10), (7, 7), (1, 3))


def test_initial_window_rfc9002_b2() -> None:
    assert Model(mds=1200).cwnd == 12000 and Model(mds=1500).cwnd == 14720 and Model().ssthresh == NONE


def test_first_rtt_sample_and_ack_delay() -> None:
    m = Model(ack_delay_exponent=3, max_ack_delay_us=25_000)
    sent(m, range(2), at=0)
    m.on_ack(Ack(((0, 0),)), now=100 * MS)
    assert (m.latest_rtt, m.min_rtt, m.smoothed_rtt, m.rttvar) == (100 * MS, 100 * MS, 100 * MS, 50 * MS)
    # 10 ms of ack delay (field 1250 << 3 us), below max_ack_delay: subtracted (RFC 9002 5.3)
    m.on_ack(Ack(((1, 1),), ack_delay=1250), now=120 * MS)
    assert m.latest_rtt == 120 * MS and m.min_rtt == 100 * MS
    assert m.smoothed_rtt == (7 * 100 * MS + 110 * MS) // 8
    assert m.rttvar == (3 * 50 * MS + 10 * MS) // 4


def test_ack_delay_capped_by_max_ack_delay() -> None:
    m = Model(ack_delay_exponent=3, max_ack_delay_us=1000)
    sent(m, range(2))
    m.on_ack(Ack(((0, 0),)), now=100 * MS)
    m.on_ack(Ack(((1, 1),), ack_delay=100_000), now=120 * MS)
    assert m.smoothed_rtt == (7 * 100 * MS + 119 * MS) // 8


def test_packet_threshold_and_newreno_halving() -> None:
    m = Model()
    sent(m, range(10), size=1200, at=1)
    out = m.on_ack(Ack(((9, 9),)), now=10 * MS)
    assert [p.pn for p in out.lost] == list(range(7))  # 7, 8 are less than 3 below 9
    assert m.ssthresh == 6000 and m.cwnd == 6000 and m.congestion_events == 1
    assert m.bytes_in_flight == 2 * 1200
    # PNs 7, 8 (sent before the recovery period) and 10 (after it) are lost by ACK 13: the event is keyed
    # to the largest lost packet's send time, after the period started, so it is a new event (RFC 9002 B.5/B.8)
    sent(m, range(10, 14), size=1200, at=20 * MS)
    out = m.on_ack(Ack(((13, 13),)), now=30 * MS)
    assert [p.pn for p in out.lost] == [7, 8, 10] and m.congestion_events == 2 and m.recovery_start_ns == 30 * MS
    # a loss of only pre-recovery packets is no new event
    sent(m, range(14, 18), size=1200, at=25 * MS)
    m.on_ack(Ack(((17, 17),)), now=40 * MS)
    assert m.congestion_events == 2


def test_congestion_avoidance_growth() -> None:
    m = Model(cwnd=12000)
    m.ssthresh = 6000
    sent(m, range(10), size=1200)  # the window is full: it may grow (RFC 9002 7.8)
    m.on_ack(Ack(((0, 2),)), now=MS)
    cwnd = 12000
    for _ in range(3):
        cwnd += 1200 * 1200 // cwnd
    assert m.cwnd == cwnd


def test_ring_eviction_and_unsent_ack() -> None:
    m = Model()
    sent(m, range(RING + 2), size=10)
    assert m.evicted == 2 and 0 not in m.sent and m.bytes_in_flight == RING * 10
    assert not m.valid(Ack(((0, RING + 5),)))
    assert m.on_ack(Ack(((0, RING + 5),)), now=MS).newly_acked == []


def test_pass_up_reasons() -> None:
    m = Model(pass_interval_us=5000)
    sent(m, range(3))
    sent(m, range(3, 4), owner=USER)
    assert m.pass_up(False, m.on_ack(Ack(((0, 0),)), now=10 * MS), 10 * MS) == "periodic"
    assert m.pass_up(False, m.on_ack(Ack(((1, 1),)), now=11 * MS), 11 * MS) is None
    assert m.pass_up(True, m.on_ack(Ack(((2, 2),)), now=12 * MS), 12 * MS) == "other_frames"
    assert m.pass_up(False, m.on_ack(Ack(((3, 3),)), now=13 * MS), 13 * MS) == "user_acked"
