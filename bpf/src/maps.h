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

#endif /* MOQ_BPF_MAPS_H */
