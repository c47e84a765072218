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
	__u8 frame_type;                   /* 0x30 or 0x31 (RFC 9221 section 4) */
	__u8 dcid_len;
	__u8 pn_len;                       /* 1..4 (RFC 9000 section 17.3.1) */
	__u8 ip_version;                   /* 4 or 6 */
	__u8 _pad0[5];
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
	ST_MAX,
};

#endif /* MOQ_BPF_STRUCTS_H */
