"""Python mirror of ``bpf/src/structs.h`` (ctypes), checked against the compiled objects' BTF.

tests/unit/test_bpf_structs.py compares every class in ``MIRRORS`` (size, field names, offsets, sizes) and
``IngressStat`` with the BTF of the object files, so a change on one side only fails the tests instead of
silently corrupting map contents (katran's "must be in sync" comment is the weak spot we avoid).
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from typing import ClassVar

QUIC_MAX_CID_LEN = 20  # RFC 9000 section 17.2
MAX_RELAY_PORTS = 4
FLOOR_MAX_TARGETS = 16
TRACK_SUBS_PER_TRACK = 64
EGRESS_MAX_DCID_LENS = 4
FASTPATH_MARK_MAGIC = 0xFA000000  # skb->mark of a clone: magic | upstream DCID length << 16 | slot
NO_LARGEST_ACKED = (1 << 64) - 1  # downstream_conn.largest_acked before the first ACK
REG_KIND_CLONE, REG_KIND_USER, REG_KIND_STREAM = 1, 2, 3

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Mirror(ctypes.Structure):
    """Base of every mirrored struct: ``c_name`` is the struct's name in structs.h."""

    c_name: ClassVar[str] = ""

    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Mirror:
        return cls.from_buffer_copy(data)

    def __repr__(self) -> str:
        vals = ", ".join(f"{n}={_plain(getattr(self, n))!r}" for n, *_ in self._fields_ if not n.startswith("_"))
        return f"{type(self).__name__}({vals})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mirror) and type(other) is type(self) and bytes(self) == bytes(other)

    __hash__ = None  # type: ignore[assignment]


def _plain(v: object) -> object:
    return list(v) if isinstance(v, ctypes.Array) else v


class IngressConfig(Mirror):
    """server_ingress .rodata ``cfg``: relay ports and the DCID length used on each."""

    c_name = "ingress_config"
    _fields_ = [("port", u16 * MAX_RELAY_PORTS), ("dcid_len", u8 * MAX_RELAY_PORTS)]


class CidKey(Mirror):
    c_name = "cid_key"
    _fields_ = [("len", u8), ("cid", u8 * QUIC_MAX_CID_LEN), ("_pad0", u8 * 3)]

    @classmethod
    def of(cls, cid: bytes) -> CidKey:
        if len(cid) > QUIC_MAX_CID_LEN:
            raise ValueError(f"connection ID longer than {QUIC_MAX_CID_LEN} bytes")
        key = cls(len=len(cid))
        key.cid[: len(cid)] = list(cid)
        return key


class UpstreamConn(Mirror):
    c_name = "upstream_conn"
    _fields_ = [("conn_id", u32), ("flags", u32)]


class TrackKey(Mirror):
    c_name = "track_key"
    _fields_ = [("conn_id", u32), ("_pad0", u32), ("alias", u64)]


class FastTrack(Mirror):
    c_name = "fast_track"
    _fields_ = [("track_id", u32), ("flags", u32)]


class ParseResult(Mirror):
    c_name = "parse_result"
    _fields_ = [
        ("alias", u64),
        ("group", u64),
        ("object", u64),
        ("pn_trunc", u64),
        ("conn_id", u32),
        ("track_id", u32),
        ("l3_off", u16),
        ("l4_off", u16),
        ("quic_off", u16),
        ("frame_off", u16),
        ("moq_off", u16),
        ("alias_off", u16),
        ("payload_end", u16),
        ("alias_len", u8),
        ("priority", u8),
        ("moq_type", u8),
        ("frame_type", u8),
        ("dcid_len", u8),
        ("pn_len", u8),
        ("ip_version", u8),
        ("_pad0", u8 * 3),
        ("sid_off", u16),
        ("sid_len", u8),
        ("stream_fin", u8),
        ("stream_len", u32),
        ("stream_id", u64),
        ("stream_off", u64),
    ]


class SubTarget(Mirror):
    """One copy target: downstream_conns slot and the client-side device index."""

    c_name = "sub_target"
    _fields_ = [("slot", u32), ("ifindex", u32)]


class TrackSubs(Mirror):
    """track_subs value: the fast-path subscribers of one track."""

    c_name = "track_subs"
    _fields_ = [("count", u32), ("_pad0", u32), ("sub", SubTarget * TRACK_SUBS_PER_TRACK)]


class DownstreamConn(Mirror):
    """downstream_conns value: what client_egress writes into a copy (addresses in network order); user-owned."""

    c_name = "downstream_conn"
    _fields_ = [
        ("largest_acked", u64),
        ("alias", u64),
        ("eth_dst", u8 * 6),
        ("eth_src", u8 * 6),
        ("ip_version", u8),
        ("dcid_len", u8),
        ("dcid", u8 * QUIC_MAX_CID_LEN),
        ("alias_len", u8),
        ("enabled", u8),
        ("key_phase", u8),
        ("prio_set", u8),
        ("priority_threshold", u8),
        ("drop_group_rest", u8),
        ("recovery", u8),
        ("prio_auto", u8),
        ("sport", u16),
        ("dport", u16),
        ("src_ip", u8 * 16),
        ("dst_ip", u8 * 16),
        ("_pad1", u8 * 2),
        ("conn_index", u32),
        ("_pad2", u32),
    ]


class DownstreamState(Mirror):
    """downstream_state value: the program's PN counter and tx counters for one slot (kernel-owned)."""

    c_name = "downstream_state"
    _fields_ = [("next_pn", u64), ("tx_packets", u64), ("tx_bytes", u64), ("dropped", u64)]


class StreamKey(Mirror):
    """fast_streams key: one subgroup stream of an upstream connection."""

    c_name = "stream_key"
    _fields_ = [("conn_id", u32), ("_pad0", u32), ("stream_id", u64)]


class SlotStreamKey(Mirror):
    """slot_streams key: one upstream stream as copied for one subscription."""

    c_name = "slot_stream_key"
    _fields_ = [("slot", u32), ("_pad0", u32), ("up_stream_id", u64)]


class SlotStream(Mirror):
    """slot_streams value: the subscriber-side stream, the offsets the kernel may copy (user-owned)."""

    c_name = "slot_stream"
    _fields_ = [("down_stream_id", u64), ("min_offset", u64), ("max_offset", u64), ("id_len", u8),
                ("_pad0", u8 * 7)]


class SlotState(Mirror):
    """slot_state value: the drop policy's per-subscription record (kernel-owned)."""

    c_name = "slot_state"
    _fields_ = [("drop_group", u64), ("sent", u64), ("priority_drops", u64), ("group_drops", u64)]


class ObjectKey(Mirror):
    """cloned_objects key: one object of one fast-path track that server_ingress cloned."""

    c_name = "object_key"
    _fields_ = [("track_id", u32), ("_pad0", u32), ("group", u64), ("object", u64)]


class RegEvent(Mirror):
    """reg_events record: one packet sent with a program-assigned packet number."""

    c_name = "reg_event"
    _fields_ = [
        ("ts_ns", u64),
        ("pn", u64),
        ("orig_pn", u64),
        ("slot", u32),
        ("size", u32),
        ("kind", u8),
        ("pn_len", u8),
        ("_pad0", u8 * 6),
        ("stream_id", u64),
        ("stream_off", u64),
        ("stream_len", u32),
        ("stream_fin", u8),
        ("_pad1", u8 * 3),
    ]


class EgressConfig(Mirror):
    """client_egress .rodata ``egress_cfg``: relay client-side ports, DCID lengths to try (0xff ends)."""

    c_name = "egress_config"
    _fields_ = [
        ("port", u16 * MAX_RELAY_PORTS), ("dcid_len", u8 * EGRESS_MAX_DCID_LENS), ("congestion_high_pct", u8),
        ("congestion_low_pct", u8), ("congestion_hold_ms", u8), ("_pad0", u8),
    ]


class DownstreamCid(Mirror):
    c_name = "downstream_cid"
    _fields_ = [("slot", u32), ("_pad0", u32)]


class FloorConfig(Mirror):
    c_name = "floor_config"
    _fields_ = [("ifindex", u32 * FLOOR_MAX_TARGETS), ("count", u32)]


class SelftestEvent(Mirror):
    c_name = "selftest_event"
    _fields_ = [("seq", u64), ("len", u32), ("magic", u32)]


class SelftestConfig(Mirror):
    c_name = "selftest_config"
    _fields_ = [("magic", u32), ("_pad0", u32)]


class IngressStat(IntEnum):
    """Index of the per-CPU ``ingress_stats`` array (enum ingress_stat)."""

    ST_ELIGIBLE = 0
    ST_OTHER = 1
    ST_NOT_QUIC = 2
    ST_LONG_HEADER = 3
    ST_PROTECTED = 4
    ST_UNKNOWN_CONN = 5
    ST_UNKNOWN_FRAME = 6
    ST_NO_DATAGRAM = 7
    ST_NOT_OBJECT = 8
    ST_TRAILING = 9
    ST_MALFORMED = 10
    ST_TOO_COMPLEX = 11
    ST_UNKNOWN_TRACK = 12
    ST_OVERSIZED = 13
    ST_CLONED = 14
    ST_CLONE_FAILED = 15
    ST_MAX = 16


class EgressStat(IntEnum):
    """Index of the per-CPU ``egress_stats`` array (enum egress_stat)."""

    EG_PASS = 0
    EG_CLONE_SENT = 1
    EG_USER_RENUMBERED = 2
    EG_NO_SUBSCRIBER = 3
    EG_DISABLED = 4
    EG_PRIORITY_DROP = 5
    EG_PN_UNENCODABLE = 6
    EG_ALIAS_LEN = 7
    EG_MALFORMED = 8
    EG_UNSUPPORTED = 9
    EG_ADJUST_FAILED = 10
    EG_RING_FULL = 11
    EG_GROUP_DROP = 12
    EG_STREAM_SENT = 13
    EG_NO_STREAM = 14
    EG_FLOW_BLOCKED = 15
    EG_MAX = 16


MIRRORS: tuple[type[Mirror], ...] = (
    IngressConfig,
    CidKey,
    UpstreamConn,
    TrackKey,
    FastTrack,
    ParseResult,
    SubTarget,
    TrackSubs,
    DownstreamConn,
    DownstreamState,
    RegEvent,
    ObjectKey,
    SlotState,
    StreamKey,
    SlotStreamKey,
    SlotStream,
    EgressConfig,
    DownstreamCid,
    FloorConfig,
    SelftestEvent,
    SelftestConfig,
)


# ---- Kernel-resident loss recovery (issue 5; bpf/src/recovery.h, client_ingress.bpf.c) ----
RECOVERY_RING = 256  # sent packets kept per connection; slot = pn % RECOVERY_RING
RECOVERY_MAX_RANGES = 32  # Additional ACK Ranges one ACK frame may carry in the kernel
RECOVERY_NONE = (1 << 64) - 1  # largest_acked / largest_sent / min_rtt before the first value
SENT_OWNER_FORWARDED, SENT_OWNER_USER = 1, 2
SENT_EMPTY, SENT_IN_FLIGHT, SENT_ACKED, SENT_LOST, SENT_NEWLY_ACKED = 0, 1, 2, 3, 4


class SentPkt(Mirror):
    """One entry of the sent-packet ring (RFC 9002 A.1.1)."""

    c_name = "sent_pkt"
    _fields_ = [
        ("pn", u64), ("sent_ns", u64), ("stream_id", u64), ("stream_off", u64), ("size", u32),
        ("stream_len", u32), ("owner", u8), ("state", u8), ("stream_fin", u8), ("_pad0", u8 * 5),
    ]


class RecoveryState(Mirror):
    """recovery_state value: RFC 9002 state of one downstream connection (kernel-owned once seeded)."""

    c_name = "recovery_state"
    _fields_ = [
        ("largest_acked", u64), ("largest_sent", u64), ("bytes_in_flight", u64), ("cwnd", u64), ("ssthresh", u64),
        ("recovery_start_ns", u64), ("latest_rtt", u64), ("min_rtt", u64), ("smoothed_rtt", u64), ("rttvar", u64),
        ("ecn_ce", u64), ("last_pass_ns", u64), ("acked_packets", u64), ("acked_bytes", u64),
        ("lost_packets", u64), ("lost_bytes", u64), ("evicted", u64), ("sent_packets", u64), ("sent_bytes", u64),
        ("congestion_events", u64), ("congested", u32), ("congestion_onsets", u32), ("over_since_ns", u64),
        ("ring", SentPkt * RECOVERY_RING),
    ]

    @classmethod
    def seeded(cls, max_datagram_size: int = 1200, next_pn: int = 0) -> RecoveryState:
        """The state user space writes when it enables a connection (RFC 9002 B.3 initial values). ``next_pn``: the
        first PN the program assigns; the ones below were aioquic's, so an ACK of them is valid (not "unsent")."""
        mds = max_datagram_size
        return cls(
            largest_acked=RECOVERY_NONE, largest_sent=next_pn - 1 if next_pn > 0 else RECOVERY_NONE,
            min_rtt=RECOVERY_NONE, ssthresh=RECOVERY_NONE, cwnd=min(10 * mds, max(14720, 2 * mds)),
        )


class RecoveryConn(Mirror):
    """recovery_conns value: the relay CID's connection and the peer's transport parameters."""

    c_name = "recovery_conn"
    _fields_ = [
        ("conn_index", u32), ("max_ack_delay_us", u32), ("pass_interval_us", u32), ("max_datagram_size", u16),
        ("ack_delay_exponent", u8), ("_pad0", u8),
    ]


class SubscriberAddr(Mirror):
    c_name = "subscriber_addr"
    _fields_ = [
        ("last_seen_ns", u64), ("packets", u64), ("ip", u8 * 16), ("port", u16), ("ip_version", u8), ("_pad0", u8 * 5),
    ]


class LossEvent(Mirror):
    """loss_events record: one forwarded packet declared lost by the packet threshold."""

    c_name = "loss_event"
    _fields_ = [
        ("ts_ns", u64), ("pn", u64), ("sent_ns", u64), ("stream_id", u64), ("stream_off", u64), ("conn_index", u32),
        ("size", u32), ("stream_len", u32), ("owner", u8), ("stream_fin", u8), ("_pad0", u8 * 2),
    ]


class RecoverySweepCmd(Mirror):
    """What user space passes recovery_sweep_prog (after 14 bytes): sweep one connection."""

    c_name = "recovery_sweep_cmd"
    _fields_ = [("now_ns", u64), ("conn_index", u32), ("_pad0", u32)]


class RecoveryFigures(Mirror):
    """recovery_figures value: the sweep's inputs (user space) and outputs (the connection's aggregate record)."""

    c_name = "recovery_figures"
    _fields_ = [
        ("max_ack_delay_ns", u64), ("max_datagram_size", u32), ("active", u32), ("swept_ns", u64),
        ("bytes_in_flight", u64), ("cwnd", u64), ("ssthresh", u64), ("smoothed_rtt", u64), ("min_rtt", u64),
        ("latest_rtt", u64), ("rttvar", u64), ("sent_packets", u64), ("sent_bytes", u64), ("acked_packets", u64),
        ("lost_packets", u64), ("evicted", u64), ("largest_sent", u64), ("congestion_events", u64),
        ("lost_now", u32), ("pto_due", u32), ("congested", u32), ("congestion_onsets", u32),
    ]


class AckOutcome(Mirror):
    """What one ACK did (kept in the ack_scratch map value while the bpf_loop walks run)."""

    c_name = "ack_outcome"
    _fields_ = [
        ("newly_acked", u32), ("lost", u32), ("user_acked", u32), ("loss_records", u32), ("ring_full", u32),
        ("rtt_sampled", u32), ("r", u32), ("_pad0", u32), ("lost_sent_ns", u64),
    ]


class AckScratch(Mirror):
    c_name = "ack_scratch"
    _fields_ = [
        ("out", AckOutcome), ("largest", u64), ("ack_delay", u64), ("ecn_ce", u64), ("nranges", u32), ("ecn", u8), ("_pad0", u8 * 3),
        ("lo", u64 * (RECOVERY_MAX_RANGES + 1)), ("hi", u64 * (RECOVERY_MAX_RANGES + 1)),
    ]


class RecoveryStat(IntEnum):
    """Index of the per-CPU ``recovery_stats`` array of client_ingress (enum recovery_stat)."""

    RS_NOT_OURS = 0
    RS_MALFORMED = 1
    RS_TOO_COMPLEX = 2
    RS_ACK_FRAMES = 3
    RS_ACKED = 4
    RS_LOST = 5
    RS_LOSS_RECORDS = 6
    RS_RING_FULL = 7
    RS_PASS_OTHER_FRAMES = 8
    RS_PASS_USER_ACKED = 9
    RS_PASS_LOSS = 10
    RS_PASS_PERIODIC = 11
    RS_CONSUMED = 12
    RS_SWEEPS = 13
    RS_TIME_LOST = 14
    RS_PTO_DUE = 15
    RS_MAX = 16


MIRRORS = MIRRORS + (SentPkt, RecoveryState, RecoveryConn, SubscriberAddr, LossEvent, AckOutcome, AckScratch,
                      RecoverySweepCmd, RecoveryFigures)


# ---- nic_crypto.bpf.c: the sim NIC's TC crypto engine (crypto_offload/tc_engine.py) ----------------------------
NCR_MAX_FLOWS = 4096
NCR_DIR_RX, NCR_DIR_TX = 0, 1


class NcrCounter(IntEnum):
    """Index of ncr_flow.counters and of the per-CPU ncr_port_stats array (api.Counters field order)."""

    NCR_C_DECRYPTED = 0
    NCR_C_ENCRYPTED = 1
    NCR_C_AUTH_FAILURES = 2
    NCR_C_NO_KEY_DROPS = 3
    NCR_C_NO_KEY_PASSES = 4
    NCR_C_KEY_PHASE_SWITCHES = 5
    NCR_C_ZERO_TAG_FORGERY_DROPS = 6
    NCR_C_MALFORMED_DROPS = 7
    NCR_C_LONG_HEADER_PASSES = 8
    NCR_C_MAX = 9


class NcrFlowKey(Mirror):
    c_name = "ncr_flow_key"
    _fields_ = [("dir", u8), ("cid_len", u8), ("cid", u8 * QUIC_MAX_CID_LEN), ("_pad0", u8 * 2)]


class NcrFlow(Mirror):
    c_name = "ncr_flow"
    _fields_ = [
        ("hp_key", u32 * 8), ("key", (u32 * 8) * 2), ("iv", (u32 * 3) * 2), ("has_key", u8 * 2),
        ("current_phase", u8), ("drop_on_failure", u8), ("_pad0", u32), ("largest_pn", ctypes.c_int64),
        ("counters", u64 * NcrCounter.NCR_C_MAX),
    ]


class NcrConfig(Mirror):
    c_name = "ncr_config"
    _fields_ = [("peer_ifindex", u32), ("cid_len_mask", u32), ("pass_unkeyed_protected_tx", u8), ("_pad0", u8 * 7)]


MIRRORS = MIRRORS + (NcrFlowKey, NcrFlow, NcrConfig)
