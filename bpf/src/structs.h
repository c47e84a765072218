/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every struct that crosses the kernel/user boundary: map keys and values, read-only
 * configuration and ring-buffer records. bpf/structs.py mirrors each one with ctypes and
 * tests/unit/test_bpf_structs.py checks the mirror against the compiled object's BTF, so a
 * change here that is not made there fails the tests (never hand-sync a struct).
 *
 * Rules: fixed-width types only, explicit padding fields (named _padN) so that the C and the
 * Python layouts agree without relying on compiler padding, 8-byte alignment for __u64 fields.
 */
#ifndef MOQ_BPF_STRUCTS_H
#define MOQ_BPF_STRUCTS_H

#include <linux/types.h>

/* RFC 9000 section 17.2: a connection ID is at most 20 bytes. */
#define QUIC_MAX_CID_LEN 20
/* How many relay UDP ports one server-side ingress program serves. */
#define MAX_RELAY_PORTS 4
/* How many devices the floor program clones every packet to. */
#define FLOOR_MAX_TARGETS 16
/* Downstream subscribers one fast-path track fans out to (track_subs value). */
#define TRACK_SUBS_PER_TRACK 64
/* DCID lengths the client-side egress tries for user-space packets (egress_config). */
#define EGRESS_MAX_DCID_LENS 4

/* How a clone carries its subscriber slot from server ingress to client egress: skb->mark (copied
 * by bpf_clone_redirect, needs no shared map, survives any queueing between the two programs).
 * bits 31..24 FASTPATH_MARK_MAGIC, 23..16 the upstream DCID length (short headers carry none,
 * RFC 9000 section 17.3.1), 15..0 the downstream_conns slot. */
#define FASTPATH_MARK_MAGIC 0xfa000000u
#define FASTPATH_MARK_MASK 0xff000000u

/* Read-only configuration of server_ingress.bpf.c (the `cfg` global in .rodata, set before load).
 * Short headers carry no DCID length (RFC 9000 section 17.3.1), so each relay port has the
 * length of the connection IDs the relay issues on it. port == 0 ends the list. */
struct ingress_config {
	__u16 port[MAX_RELAY_PORTS];       /* UDP destination port, host byte order */
	__u8 dcid_len[MAX_RELAY_PORTS];    /* DCID length on that port, 0..20 */
};

/* Key of the upstream_conns map: the DCID the relay issued to an upstream (publisher) connection. */
struct cid_key {
	__u8 len;                          /* 0..QUIC_MAX_CID_LEN */
	__u8 cid[QUIC_MAX_CID_LEN];        /* bytes past len are zero */
	__u8 _pad0[3];
};

/* Value of the upstream_conns map. */
struct upstream_conn {
	__u32 conn_id;                     /* control-plane id of the upstream connection */
	__u32 flags;                       /* reserved, 0 */
};

/* Key of the fast_tracks map: one track alias on one upstream connection. */
struct track_key {
	__u32 conn_id;                     /* upstream_conn.conn_id */
	__u32 _pad0;
	__u64 alias;                       /* MoQT track alias as sent by the publisher (draft-14 section 9.4.2) */
};

/* Value of the fast_tracks map. */
struct fast_track {
	__u32 track_id;                    /* control-plane id of the track (finds its subscribers later) */
	__u32 flags;                       /* reserved, 0 */
};

/* What the server-side ingress parser found in an eligible packet. Offsets are from the start of
 * the Ethernet header so that later programs can rewrite in place. */
struct parse_result {
	__u64 alias;                       /* MoQT track alias */
	__u64 group;                       /* MoQT group id */
	__u64 object;                      /* MoQT object id (0 when the datagram type omits it) */
	__u64 pn_trunc;                    /* truncated packet number as on the wire */
	__u32 conn_id;                     /* upstream connection */
	__u32 track_id;                    /* fast_track.track_id */
	__u16 l3_off;                      /* IPv4/IPv6 header */
	__u16 l4_off;                      /* UDP header */
	__u16 quic_off;                    /* first byte of the short header */
	__u16 frame_off;                   /* the DATAGRAM frame's type byte */
	__u16 moq_off;                     /* the MoQT OBJECT_DATAGRAM type */
	__u16 alias_off;                   /* the track alias varint */
	__u16 payload_end;                 /* offset of the 16-byte tag room (end of QUIC payload) */
	__u8 alias_len;                    /* encoded length of the alias varint: 1, 2, 4 or 8 */
	__u8 priority;                     /* MoQT publisher priority (lower = more important) */
	__u8 moq_type;                     /* OBJECT_DATAGRAM type 0x00-0x07 */
	__u8 frame_type;                   /* 0x30/0x31 (RFC 9221 section 4) or STREAM 0x08-0x0f */
	__u8 dcid_len;
	__u8 pn_len;                       /* 1..4 (RFC 9000 section 17.3.1) */
	__u8 ip_version;                   /* 4 or 6 */
	__u8 _pad0[3];
	__u16 sid_off;                     /* STREAM frame (RFC 9000 section 19.8): the Stream ID varint */
	__u8 sid_len;                      /* its encoded length */
	__u8 stream_fin;                   /* FIN bit of the frame type */
	__u32 stream_len;                  /* Length of the stream data in this frame */
	__u64 stream_id;                   /* Stream ID */
	__u64 stream_off;                  /* Offset (0 when the OFF bit is clear) */
};

/* Key of fast_streams (server_ingress): one subgroup stream of an upstream connection. */
struct stream_key {
	__u32 conn_id;                     /* upstream_conn.conn_id */
	__u32 _pad0;
	__u64 stream_id;                   /* the publisher's stream (RFC 9000 section 2.1) */
};

/* Key of slot_streams (client_egress): one upstream stream as copied for one subscription. */
struct slot_stream_key {
	__u32 slot;                        /* downstream_conns slot */
	__u32 _pad0;
	__u64 up_stream_id;                /* the publisher's stream id */
};

/* Value of slot_streams, written by user space when it opened the subscriber's stream (the
 * subgroup header and the bytes received so far go from user space; later data from the kernel,
 * at the same offsets: a relay copies the stream byte for byte except the alias). */
struct slot_stream {
	__u64 down_stream_id;              /* the subscriber-side stream (same varint length) */
	__u64 min_offset;                  /* copies of data below this offset are user space's */
	__u64 max_offset;                  /* flow control (RFC 9000 section 4): data must end here or
					    * below: min of MAX_STREAM_DATA and a share of MAX_DATA */
	__u8 id_len;                       /* encoded length of both stream ids */
	__u8 _pad0[7];
};

/* Key of the cloned_objects map: one object of one fast-path track. server_ingress records every
 * object it cloned, so user space, which still receives the original, forwards it only to the
 * subscribers the kernel did not serve (an upstream packet the parser refused, e.g. two DATAGRAM
 * frames in one packet, must still reach kernel-served subscribers: through the user-space path). */
struct object_key {
	__u32 track_id;                    /* fast_track.track_id */
	__u32 _pad0;
	__u64 group;                       /* MoQT group id (draft-14 section 9.4.2) */
	__u64 object;                      /* MoQT object id (0 when the datagram type omits it) */
};
/* One downstream copy target: the subscriber slot (downstream_conns key) and the client-side port. */
struct sub_target {
	__u32 slot;                        /* downstream_conns index */
	__u32 ifindex;                     /* client-side device the copy leaves by (egress) */
};

/* Value of the track_subs map: the fast-path subscribers of one track (key: fast_track.track_id). */
struct track_subs {
	__u32 count;                       /* entries of sub used, 0..TRACK_SUBS_PER_TRACK */
	__u32 _pad0;
	struct sub_target sub[TRACK_SUBS_PER_TRACK];
};

/* Value of the downstream_conns map (key: slot = one subscription of one downstream connection,
 * since the track alias is per subscription): everything the client egress writes into a copy.
 * Written only by user space (the controller may rewrite it whole at any time: largest_acked, the
 * threshold, the key phase); what the program counts lives in downstream_state, so such an update
 * can never roll the packet-number counter back (invariant 1). Addresses in network byte order,
 * ports in host order. */
struct downstream_conn {
	__u64 largest_acked;               /* largest PN the subscriber acknowledged; ~0 = none yet */
	__u64 alias;                       /* MoQT track alias on this session (draft-14 section 9.4.2) */
	__u8 eth_dst[6];                   /* subscriber-side next hop */
	__u8 eth_src[6];                   /* client-side port */
	__u8 ip_version;                   /* 4 or 6: must match the copy (no family change yet) */
	__u8 dcid_len;                     /* 0..20: the subscriber's connection ID */
	__u8 dcid[QUIC_MAX_CID_LEN];
	__u8 alias_len;                    /* encoded length of alias: 1, 2, 4 or 8 (RFC 9000 section 16) */
	__u8 enabled;                      /* 1: the program is the PN authority (invariant 1) */
	__u8 key_phase;                    /* 0 or 1: Key Phase bit (RFC 9000 section 17.3.1) */
	__u8 prio_set;                     /* 1: priority_threshold is in force */
	__u8 priority_threshold;           /* drop objects whose publisher priority is greater */
	__u8 drop_group_rest;              /* 1: after a policy drop, drop the rest of that group too
					    * (later objects of a group depend on earlier ones) */
	__u8 recovery;                     /* 1: kernel recovery (issue 5): every numbered packet enters
					    * recovery_state[conn_index], largest_acked is read from there,
					    * forwarded datagram copies get no registration record */
	__u8 prio_auto;                    /* 1 (with recovery): priority_threshold is in force while the
					    * kernel's window says congested (egress_cfg's hysteresis) */
	__u16 sport;                       /* relay's client-side UDP port */
	__u16 dport;                       /* subscriber's UDP port */
	__u8 src_ip[16];                   /* IPv4 in the first 4 bytes */
	__u8 dst_ip[16];
	__u8 _pad1[2];
	__u32 conn_index;                  /* downstream_state index: one per downstream connection,
					    * shared by all its slots (one PN counter, invariant 1) */
	__u32 _pad2;
};

/* Value of the slot_state array (index: downstream_conns slot): what the drop policy did to one
 * subscription. Kernel-owned (the controller zeroes it before the slot is used); plain adds: a
 * slot's copies are rewritten on one CPU at a time in practice, and these are statistics. */
struct slot_state {
	__u64 drop_group;                  /* group whose rest is being dropped, plus one; 0 = none */
	__u64 sent;                        /* copies sent for this subscription */
	__u64 priority_drops;              /* copies dropped by the priority threshold */
	__u64 group_drops;                 /* copies dropped as the rest of a dropped group */
};

/* Value of the downstream_state array (index: downstream_conn.conn_index): owned by the program once the controller
 * seeded next_pn before enabling the slot; updated with atomic adds only. */
struct downstream_state {
	__u64 next_pn;                     /* next packet number to assign (RFC 9000 section 12.3) */
	__u64 tx_packets;                  /* packets this program sent on the connection */
	__u64 tx_bytes;
	__u64 dropped;                     /* copies dropped for this subscriber (any reason) */
};

/* Ring-buffer record of client_egress: one per packet sent with a program-assigned PN, so user
 * space registers it in the connection's sent history (DESIGN section 1, invariant 2). */
struct reg_event {
	__u64 ts_ns;                       /* bpf_ktime_get_ns() when sent */
	__u64 pn;                          /* full packet number assigned */
	__u64 orig_pn;                     /* truncated PN the packet had (user-space packets: to re-key) */
	__u32 slot;                        /* downstream_conns slot */
	__u32 size;                        /* bytes of the frame as sent (skb->len) */
	__u8 kind;                         /* REG_KIND_CLONE, REG_KIND_USER or REG_KIND_STREAM */
	__u8 pn_len;                       /* encoded PN length used, 1..4 */
	__u8 _pad0[6];
	__u64 stream_id;                   /* REG_KIND_STREAM: the subscriber-side stream */
	__u64 stream_off;                  /* ... offset of the data the copy carries */
	__u32 stream_len;                  /* ... its length */
	__u8 stream_fin;                   /* ... and whether it ends the stream */
	__u8 _pad1[3];
};

#define REG_KIND_CLONE 1
#define REG_KIND_USER 2
#define REG_KIND_STREAM 3

/* Read-only configuration of client_egress.bpf.c: the relay's client-side ports and the DCID
 * lengths of downstream connections (to find user-space packets of enabled connections). */
struct egress_config {
	__u16 port[MAX_RELAY_PORTS];       /* UDP source port of the relay, host order; 0 ends */
	__u8 dcid_len[EGRESS_MAX_DCID_LENS]; /* lengths to try, 0xff ends */
	__u8 congestion_high_pct;          /* kernel recovery's drop policy: congested once bytes in flight */
	__u8 congestion_low_pct;           /* reach high % of cwnd (for congestion_hold_ms without a break), */
	__u8 congestion_hold_ms;           /* until they fall below low % */
	__u8 _pad0;
};

/* Key of downstream_cids: the subscriber's DCID -> slot (user-space packets carry no mark). */
struct downstream_cid {
	__u32 slot;
	__u32 _pad0;
};

/* Read-only configuration of floor.bpf.c. */
struct floor_config {
	__u32 ifindex[FLOOR_MAX_TARGETS];  /* devices to clone every packet to (egress) */
	__u32 count;                       /* how many entries of ifindex are used */
};

/* Ring-buffer record of the loader self-test program (exercises the ring-buffer path). */
struct selftest_event {
	__u64 seq;                         /* per-program sequence number */
	__u32 len;                         /* skb->len */
	__u32 magic;                       /* selftest_config.magic (proves .rodata was set before load) */
};

/* Read-only configuration of the loader self-test program. */
struct selftest_config {
	__u32 magic;
	__u32 _pad0;
};

/* Indexes of the per-CPU stats array of server_ingress (one __u64 counter each). The reason an
 * ineligible packet went up the slow path is the first check that failed. */
enum ingress_stat {
	ST_ELIGIBLE = 0,                   /* DATAGRAM with a MoQT object of a fast-path track */
	ST_OTHER,                          /* not UDP to a relay port (ARP, TCP, other ports) */
	ST_NOT_QUIC,                       /* fixed bit clear or too short for a short header */
	ST_LONG_HEADER,                    /* Initial/0-RTT/Handshake/Retry: software only */
	ST_PROTECTED,                      /* tag room not all zero: not NIC-verified plaintext */
	ST_UNKNOWN_CONN,                   /* DCID not an upstream connection */
	ST_UNKNOWN_FRAME,                  /* a frame the walk does not skip (STREAM, CRYPTO, ...) */
	ST_NO_DATAGRAM,                    /* only PADDING/PING/ACK */
	ST_NOT_OBJECT,                     /* DATAGRAM payload is not OBJECT_DATAGRAM 0x00-0x07 */
	ST_TRAILING,                       /* bytes after the DATAGRAM frame */
	ST_MALFORMED,                      /* truncated or inconsistent lengths */
	ST_TOO_COMPLEX,                    /* more frames or ACK ranges than the bounded walk takes */
	ST_UNKNOWN_TRACK,                  /* alias not in fast_tracks */
	ST_OVERSIZED,                      /* longer than the parser's offset bound (PARSE_MAX_OFF) */
	ST_CLONED,                         /* one per copy handed to a client-side port */
	ST_CLONE_FAILED,                   /* bpf_clone_redirect refused (device gone, ...) */
	ST_MAX,
};

/* Indexes of the per-CPU egress_stats array of client_egress. */
enum egress_stat {
	EG_PASS = 0,                       /* not a fast-path packet: untouched */
	EG_CLONE_SENT,                     /* a copy rewritten and sent */
	EG_USER_RENUMBERED,                /* a user-space 1-RTT packet renumbered and sent */
	EG_NO_SUBSCRIBER,                  /* copy whose slot has no state: dropped (invariant 3) */
	EG_DISABLED,                       /* copy for a connection not enabled: dropped */
	EG_PRIORITY_DROP,                  /* publisher priority above the subscriber's threshold */
	EG_PN_UNENCODABLE,                 /* PN too far from largest acked for 4 bytes (invariant 1) */
	EG_ALIAS_LEN,                      /* subscriber alias needs another varint length */
	EG_MALFORMED,                      /* a marked copy that does not parse as a MoQT datagram */
	EG_UNSUPPORTED,                    /* IP family change, or resize with IPv4 options */
	EG_ADJUST_FAILED,                  /* bpf_skb_adjust_room or a store failed */
	EG_RING_FULL,                      /* no room for the registration record: not sent */
	EG_GROUP_DROP,                     /* rest of a group whose earlier object the policy dropped */
	EG_STREAM_SENT,                    /* a subgroup-stream copy rewritten and sent */
	EG_NO_STREAM,                      /* stream copy without a mapping for the subscription (or below
					    * its start offset): user space sends that data */
	EG_FLOW_BLOCKED,                   /* stream copy beyond the subscriber's flow-control credit */
	EG_MAX,
};

/* ---- Kernel-resident loss recovery (issue 5; bpf/src/recovery.h, client_ingress.bpf.c) ---- */
/* Sent packets kept per downstream connection (power of two; slot = pn & (RECOVERY_RING - 1)). */
#define RECOVERY_RING 256
/* Decoded ACK ranges one ACK frame may carry (first range + Additional ACK Ranges). */
#define RECOVERY_MAX_RANGES 32
#define SENT_OWNER_FORWARDED 1             /* a kernel copy: the kernel owns its recovery */
#define SENT_OWNER_USER 2                  /* a user-space packet the egress program renumbered */
#define SENT_EMPTY 0                       /* sent_pkt.state */
#define SENT_IN_FLIGHT 1
#define SENT_ACKED 2
#define SENT_LOST 3
#define SENT_NEWLY_ACKED 4                 /* transient inside one ACK's processing */

/* One sent packet (RFC 9002 appendix A.1.1), in the ring of struct recovery_state. */
struct sent_pkt {
	__u64 pn;                          /* full packet number */
	__u64 sent_ns;                     /* bpf_ktime_get_ns() when sent */
	__u64 stream_id;                   /* forwarded stream data: subscriber-side stream */
	__u64 stream_off;                  /* ... offset of the data */
	__u32 size;                        /* bytes counted in flight */
	__u32 stream_len;                  /* ... length of the data (0: no stream data) */
	__u8 owner;                        /* SENT_OWNER_* */
	__u8 state;                        /* SENT_* */
	__u8 stream_fin;
	__u8 _pad0[5];
};

/* Value of recovery_state (index: downstream_conn.conn_index): RFC 9002 state of one downstream
 * connection. Seeded by user space when it enables the connection (cwnd, ssthresh = ~0,
 * largest_acked = ~0, min_rtt = ~0), then kernel-owned. Times in ns. */
struct recovery_state {
	__u64 largest_acked;               /* RFC 9002 A.3 largest_acked_packet; ~0 = none */
	__u64 largest_sent;                /* highest PN recovery_on_sent saw; ~0 = none */
	__u64 bytes_in_flight;             /* RFC 9002 B.2 */
	__u64 cwnd;                        /* congestion_window, read by the egress drop policy */
	__u64 ssthresh;
	__u64 recovery_start_ns;           /* congestion_recovery_start_time; 0 = never */
	__u64 latest_rtt;                  /* RFC 9002 section 5 */
	__u64 min_rtt;                     /* ~0 = no sample yet */
	__u64 smoothed_rtt;
	__u64 rttvar;
	__u64 ecn_ce;                      /* largest ECN-CE count seen (RFC 9002 B.7) */
	__u64 last_pass_ns;                /* last packet of this connection handed to user space */
	__u64 acked_packets;               /* totals for the aggregate records (issue 5 part 4) */
	__u64 acked_bytes;
	__u64 lost_packets;
	__u64 lost_bytes;
	__u64 evicted;                     /* in-flight packets overwritten in the ring (no verdict) */
	__u64 sent_packets;
	__u64 sent_bytes;
	__u64 congestion_events;
	__u32 congested;                   /* the egress drop policy's state (hysteresis, prio_auto) */
	__u32 congestion_onsets;           /* times it went from 0 to 1 */
	__u64 over_since_ns;               /* since when bytes in flight are above the high mark; 0 = not */
	struct sent_pkt ring[RECOVERY_RING];
};

/* Value of recovery_conns (key: the relay's CID the subscriber sends to, struct cid_key). */
struct recovery_conn {
	__u32 conn_index;                  /* recovery_state / downstream_state index */
	__u32 max_ack_delay_us;            /* peer's max_ack_delay (RFC 9000 section 18.2) */
	__u32 pass_interval_us;            /* pass one packet up at least this often (0: 5000) */
	__u16 max_datagram_size;           /* RFC 9002 B.2 (0: 1200) */
	__u8 ack_delay_exponent;           /* peer's ack_delay_exponent (RFC 9000 section 18.2) */
	__u8 _pad0;
};

/* Value of subscriber_addrs (index: conn_index): where the subscriber last sent from. */
struct subscriber_addr {
	__u64 last_seen_ns;
	__u64 packets;
	__u8 ip[16];                       /* IPv4 in the first 4 bytes, network order */
	__u16 port;                        /* host order */
	__u8 ip_version;                   /* 0 = never seen */
	__u8 _pad0[5];
};

/* Ring-buffer record of client_ingress: one forwarded packet declared lost (RFC 9002 6.1.1). */
struct loss_event {
	__u64 ts_ns;
	__u64 pn;
	__u64 sent_ns;
	__u64 stream_id;
	__u64 stream_off;
	__u32 conn_index;
	__u32 size;
	__u32 stream_len;
	__u8 owner;
	__u8 stream_fin;
	__u8 _pad0[2];
};

/* The packet user space's test run of recovery_sweep_prog carries after a 14-byte Ethernet header:
 * sweep this connection (RFC 9002 6.1.2 time threshold, 6.2.1 PTO) if its recovery_figures entry is
 * active; the results go there too. */
struct recovery_sweep_cmd {
	__u64 now_ns;                      /* 0: bpf_ktime_get_ns() */
	__u32 conn_index;
	__u32 _pad0;
};

/* Value of recovery_figures (index: conn_index): the sweep's inputs (user space) and, after each sweep,
 * its outputs: the aggregate record of the connection (issue 5 part 4) read by the drop policy and the
 * stats without copying the 12 KiB sent-packet ring. */
struct recovery_figures {
	__u64 max_ack_delay_ns;            /* in: peer's max_ack_delay, for the PTO (RFC 9000 18.2) */
	__u32 max_datagram_size;           /* in: 0 = 1200 */
	__u32 active;                      /* in: 1 = sweep this connection */
	__u64 swept_ns;                    /* out: when */
	__u64 bytes_in_flight;             /* out: recounted from the ring */
	__u64 cwnd;
	__u64 ssthresh;                    /* ~0 = none yet */
	__u64 smoothed_rtt;                /* ns; min_rtt ~0 = no sample yet */
	__u64 min_rtt;
	__u64 latest_rtt;
	__u64 rttvar;
	__u64 sent_packets;
	__u64 sent_bytes;
	__u64 acked_packets;
	__u64 lost_packets;
	__u64 evicted;
	__u64 largest_sent;                /* ~0 = none */
	__u64 congestion_events;
	__u32 lost_now;                    /* out: declared lost by this sweep's time threshold */
	__u32 pto_due;                     /* out: 1 = in flight and nothing sent for a PTO */
	__u32 congested;                   /* out: the egress drop policy's state */
	__u32 congestion_onsets;
};

/* Per-CPU scratch of client_ingress: the one ACK frame of a packet, decoded and validated before
 * any state changes (a malformed frame leaves the state untouched). lo/hi: inclusive PN ranges,
 * descending. */
/* What one ACK did (inside struct ack_scratch: the bpf_loop callbacks update it in a map value, which
 * the verifier does not track, so the walk converges instead of being explored per value). */
struct ack_outcome {
	__u32 newly_acked;
	__u32 lost;
	__u32 user_acked;                  /* newly acked packets owned by user space */
	__u32 loss_records;
	__u32 ring_full;
	__u32 rtt_sampled;
	__u32 r;                           /* walk: current ACK range index; > RECOVERY_MAX_RANGES = none */
	__u32 _pad0;
	__u64 lost_sent_ns;                /* walk: sent time of the largest lost packet, +1; 0 = none */
};

struct ack_scratch {
	struct ack_outcome out;            /* reset per ACK */
	__u64 largest;
	__u64 ack_delay;                   /* raw field, before the exponent */
	__u64 ecn_ce;
	__u32 nranges;
	__u8 ecn;                          /* 1: ACK_ECN */
	__u8 _pad0[3];
	__u64 lo[RECOVERY_MAX_RANGES + 1];
	__u64 hi[RECOVERY_MAX_RANGES + 1];
};

/* Indexes of the per-CPU recovery_stats array of client_ingress. */
enum recovery_stat {
	RS_NOT_OURS = 0,                   /* not a 1-RTT packet of an enabled connection: up, untouched */
	RS_MALFORMED,                      /* malformed frame or ACK: up unchanged, state untouched */
	RS_TOO_COMPLEX,                    /* more frames/ranges/ACK frames than the walk takes: up */
	RS_ACK_FRAMES,                     /* ACK frames applied to the kernel state */
	RS_ACKED,                          /* packets newly acknowledged */
	RS_LOST,                           /* packets declared lost (packet threshold) */
	RS_LOSS_RECORDS,                   /* loss_event records written */
	RS_RING_FULL,                      /* loss record dropped: loss_events full */
	RS_PASS_OTHER_FRAMES,              /* up: carries a frame besides ACK/PADDING/PING */
	RS_PASS_USER_ACKED,                /* up: acknowledges a user-space-owned PN */
	RS_PASS_LOSS,                      /* up: loss detected */
	RS_PASS_PERIODIC,                  /* up: the connection's pass interval elapsed */
	RS_CONSUMED,                       /* handled in the kernel: TC_ACT_SHOT */
	RS_SWEEPS,                         /* recovery_sweep runs (user space, a few per RTT) */
	RS_TIME_LOST,                      /* packets declared lost by the time threshold (sweep) */
	RS_PTO_DUE,                        /* sweeps that found a probe timeout due (user space probes) */
	RS_MAX,
};

/* ---- nic_crypto.bpf.c: the sim NIC's TC crypto engine (crypto_offload/tc_engine.py fills the maps) ---- */
#define NCR_MAX_FLOWS 4096
#define NCR_DIR_RX 0                       /* wire -> host: decrypt (crypto_offload.api.Direction.RX) */
#define NCR_DIR_TX 1                       /* host -> wire: encrypt */

/* ncr_flows key: a direction and the DCID the packets carry (api.FlowKey). */
struct ncr_flow_key {
	__u8 dir;
	__u8 cid_len;
	__u8 cid[QUIC_MAX_CID_LEN];
	__u8 _pad0[2];
};

/* Indexes of ncr_flow.counters and of the per-CPU ncr_port_stats array (api.Counters field order). */
enum ncr_counter {
	NCR_C_DECRYPTED = 0,
	NCR_C_ENCRYPTED,
	NCR_C_AUTH_FAILURES,
	NCR_C_NO_KEY_DROPS,
	NCR_C_NO_KEY_PASSES,
	NCR_C_KEY_PHASE_SWITCHES,
	NCR_C_ZERO_TAG_FORGERY_DROPS,
	NCR_C_MALFORMED_DROPS,
	NCR_C_LONG_HEADER_PASSES,
	NCR_C_MAX,
};

/* ncr_flows value: ChaCha20-Poly1305 keys as the wire bytes (read as little-endian words, RFC 8439 2.3),
 * one payload key + IV per key-phase bit (RFC 9001 6), the HP key (kept across key updates). */
struct ncr_flow {
	__u32 hp_key[8];
	__u32 key[2][8];
	__u32 iv[2][3];
	__u8 has_key[2];
	__u8 current_phase;
	__u8 drop_on_failure;              /* api.DecryptFailurePolicy.DROP */
	__u32 _pad0;
	__s64 largest_pn;                  /* RX: largest verified; TX: largest sent; -1 none */
	__u64 counters[NCR_C_MAX];
};

/* ncr_config[NCR_DIR_*]: where the program redirects, which DCID lengths it tries. */
struct ncr_config {
	__u32 peer_ifindex;                /* the other veth of the NIC; 0: TC_ACT_OK (test runs) */
	__u32 cid_len_mask;                /* bit n: some flow of this direction has an n-byte DCID */
	__u8 pass_unkeyed_protected_tx;
	__u8 _pad0[7];
};

#endif /* MOQ_BPF_STRUCTS_H */
