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
	__u8 _pad0[2];
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

#endif /* MOQ_BPF_STRUCTS_H */
