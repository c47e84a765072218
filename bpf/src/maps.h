/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the relay programs, with its capacity (DESIGN invariant 6: bounded state; a full
 * map degrades to the slow path). Maps are defined in the .bpf.c that includes the matching
 * MAPS_* block, so each program object only carries what it uses; names are what user space
 * finds them by (bpf/loader.py: obj.maps["name"]).
 */
#ifndef MOQ_BPF_MAPS_H
#define MOQ_BPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"

/* Capacities. */
#define UPSTREAM_CONNS_MAX 1024   /* DCIDs of upstream connections: ~one per publisher connection ID in use */
#define FAST_TRACKS_MAX 8192      /* fast-path (connection, alias) pairs over all publishers */
#define TRACK_SUBS_MAX FAST_TRACKS_MAX /* one subscriber list per fast-path track (64 slots each) */
#define DOWNSTREAM_CONNS_MAX 4096 /* subscriber slots (a slot must fit the mark's 16 bits) */
#define DOWNSTREAM_CIDS_MAX 4096  /* subscriber DCIDs in use by enabled connections */
#define REG_EVENTS_BYTES (1 << 20) /* registration ring: 1 MiB = ~14.5k records (64 bytes + 8 header) */
#define FAST_STREAMS_MAX 8192     /* upstream subgroup streams the kernel copies */
#define SLOT_STREAMS_MAX 16384    /* (subscription, upstream stream) copy mappings */
#define CLONED_OBJECTS_MAX 16384  /* recently cloned objects (LRU): a few seconds of every track */

#ifdef MAPS_SERVER_INGRESS
/* DCID (as issued by the relay) -> upstream connection. Filled by the fast-path controller when an
 * upstream connection is enabled and when it issues or retires connection IDs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPSTREAM_CONNS_MAX);
	__type(key, struct cid_key);
	__type(value, struct upstream_conn);
} upstream_conns SEC(".maps");

/* (upstream connection, track alias) -> fast-path track. Only tracks with at least one
 * fast-path subscriber are present (DESIGN invariant 3). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FAST_TRACKS_MAX);
	__type(key, struct track_key);
	__type(value, struct fast_track);
} fast_tracks SEC(".maps");

/* Counters indexed by enum ingress_stat; per CPU so the hot path never shares a cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ingress_stats SEC(".maps");

/* The last eligible parse on each CPU (one entry). Tests read it; later stages hand the same
 * record to the clone/rewrite step. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_result);
} last_parse SEC(".maps");

/* track id -> its fast-path subscribers (up to TRACK_SUBS_PER_TRACK each); a track without an
 * entry has no copies. Filled by the controller after SUBSCRIBE_OK (invariant 3). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRACK_SUBS_MAX);
	__type(key, __u32);
	__type(value, struct track_subs);
} track_subs SEC(".maps");

/* Objects cloned in the last few seconds (key: track, group, object -> number of copies made). User
 * space looks an upstream object up before forwarding it to kernel-served subscribers (DESIGN
 * invariant 5's other half: what the kernel did not send, user space sends). LRU: never full. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CLONED_OBJECTS_MAX);
	__type(key, struct object_key);
	__type(value, __u32);
} cloned_objects SEC(".maps");

/* (upstream connection, stream id) -> the fast-path track whose subgroup stream it is. Written by
 * the controller once user space has read the stream's header (its first bytes always go up). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FAST_STREAMS_MAX);
	__type(key, struct stream_key);
	__type(value, struct fast_track);
} fast_streams SEC(".maps");
#endif

#ifdef MAPS_CLIENT_EGRESS
/* slot -> downstream connection state (addresses, DCID, alias, PN counter). A hash, so that a
 * removed subscriber is absent, not zeroed: a copy for a missing slot is dropped (invariant 3). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DOWNSTREAM_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct downstream_conn);
} downstream_conns SEC(".maps");

/* slot -> what the drop policy did for that subscription (kernel-owned, zeroed by the controller
 * before the slot is used). An array: looked up on every copy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DOWNSTREAM_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct slot_state);
} slot_state SEC(".maps");

/* (slot, upstream stream id) -> the subscriber-side stream a copy of that stream's data goes to,
 * with its flow-control limit (user-owned: rewritten whole when MAX_DATA/MAX_STREAM_DATA move). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLOT_STREAMS_MAX);
	__type(key, struct slot_stream_key);
	__type(value, struct slot_stream);
} slot_streams SEC(".maps");

/* conn_index -> packet-number counter and tx counters of one downstream connection (kernel-owned;
 * see struct downstream_state). Same capacity as slots: at most one connection per slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DOWNSTREAM_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct downstream_state);
} downstream_state SEC(".maps");

/* Subscriber DCID -> slot, to renumber user-space 1-RTT packets of enabled connections. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DOWNSTREAM_CIDS_MAX);
	__type(key, struct cid_key);
	__type(value, struct downstream_cid);
} downstream_cids SEC(".maps");

/* Counters indexed by enum egress_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EG_MAX);
	__type(key, __u32);
	__type(value, __u64);
} egress_stats SEC(".maps");

/* Registration records (struct reg_event) for the user-space registration loop. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, REG_EVENTS_BYTES);
} reg_events SEC(".maps");

/* Scratch for the UDP checksum: 512-byte chunks of the segment plus 4 bytes of zero padding. */
struct csum_scratch {
	__u8 buf[516];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_scratch);
} csum_scratch SEC(".maps");
#endif

#ifdef MAPS_FLOOR
/* Packets cloned and clone failures (index 0: clones sent, 1: clone errors). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} floor_stats SEC(".maps");
#endif

#ifdef MAPS_SELFTEST
/* Loader self-test: a ring buffer (256 KiB), a hash map (64 entries) for the typed map API. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} selftest_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct track_key);
	__type(value, struct fast_track);
} selftest_hash SEC(".maps");
#endif

#if defined(MAPS_RECOVERY) || defined(MAPS_RECOVERY_STATE)
/* ---- Kernel-resident loss recovery (issue 5; recovery.h, client_ingress.bpf.c) ---- */
#define RECOVERY_CONNS_MAX 1024   /* downstream connections with kernel recovery (~12.4 KiB each) */
#define LOSS_EVENTS_BYTES (256 * 1024) /* loss records (56 bytes + 8 header) */

/* conn_index -> sent-packet ring, RTT, bytes in flight, cwnd (struct recovery_state). Written by
 * recovery_on_sent (client_egress, MAPS_RECOVERY_STATE) and recovery_on_ack (client_ingress); seeded
 * by user space. The relay loads client_ingress with client_egress's map (bpf_map__reuse_fd). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RECOVERY_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct recovery_state);
} recovery_state SEC(".maps");
#endif

#ifdef MAPS_RECOVERY

/* The relay's CID a subscriber sends to -> its connection and the peer's transport parameters. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DOWNSTREAM_CIDS_MAX);
	__type(key, struct cid_key);
	__type(value, struct recovery_conn);
} recovery_conns SEC(".maps");

/* conn_index -> the subscriber's address as last seen (the controller reads it: migration). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RECOVERY_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct subscriber_addr);
} subscriber_addrs SEC(".maps");

/* Counters indexed by enum recovery_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} recovery_stats SEC(".maps");

/* Loss records (struct loss_event) of forwarded packets, for user-space retransmission. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, LOSS_EVENTS_BYTES);
} loss_events SEC(".maps");

/* conn_index -> the sweep's inputs and its last outputs (struct recovery_figures). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RECOVERY_CONNS_MAX);
	__type(key, __u32);
	__type(value, struct recovery_figures);
} recovery_figures SEC(".maps");

/* The packet's ACK frame, decoded before any state changes (one per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ack_scratch);
} ack_scratch SEC(".maps");
#endif

#endif /* MOQ_BPF_MAPS_H */
