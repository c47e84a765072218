/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The NIC-side ingress classifier (offload.md: "what can run on the NFP"): parse a plaintext 1-RTT
 * packet down to the MoQT OBJECT_DATAGRAM, count objects per track, and drop objects of tracks
 * nobody subscribed to before they cost the host anything. Everything else passes unchanged.
 *
 * Written inside the NFP subset and checked by `relay offload-check --target nfp`: XDP, hash and
 * array maps only, map lookup/update helpers only, counters by atomic add (never a plain store
 * into a map value), no 64-bit multiply, no division, no .rodata (configuration is an array map,
 * since a device program cannot read host global data).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "parsing.h"
#include "structs.h"

/* Relay ports and their DCID lengths (entry 0): the same record server_ingress gets in .rodata. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ingress_config);
} classifier_cfg SEC(".maps");

/* DCID (as issued by the relay) -> upstream connection, as server_ingress's upstream_conns. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct cid_key);
	__type(value, struct upstream_conn);
} classifier_conns SEC(".maps");

/* (upstream connection, alias) present = at least one subscriber wants the track. Filled by the
 * control plane; an object of a track not in here is dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct track_key);
	__type(value, __u32);
} subscribed SEC(".maps");

/* (upstream connection, alias) -> objects seen, subscribed or not. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct track_key);
	__type(value, __u64);
} track_objects SEC(".maps");

/* Packets by enum ingress_stat (where the parse stopped); ST_UNKNOWN_TRACK counts the drops. A
 * plain array (not per-CPU: the NFP offloads hash and array only), bumped by atomic add. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} classifier_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&classifier_stats, &stat);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void count_track(const struct track_key *tk)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(&track_objects, tk);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&track_objects, tk, &one, BPF_NOEXIST);
}

static __always_inline int classify(struct xdp_md *ctx, struct track_key *tk)
{
	struct cursor c;
	struct parse_result r = {};
	struct cid_key ck = {};
	struct ingress_config *cfg;
	struct upstream_conn *conn;
	__u32 zero = 0;
	int proto, port, dcid_len, st;

	c.data = (void *)(long)ctx->data;
	c.data_end = (void *)(long)ctx->data_end;
	c.off = 0;
	if (c.data_end - c.data > PARSE_MAX_OFF)
		return ST_OVERSIZED;
	c.lim = c.data_end - c.data;

	proto = parse_ethhdr(&c);
	if (proto == ETH_P_IP)
		st = parse_ipv4(&c);
	else if (proto == ETH_P_IPV6)
		st = parse_ipv6(&c);
	else
		return ST_OTHER;
	if (st < 0)
		return st == PARSE_ERR_OTHER ? ST_OTHER : ST_MALFORMED;
	port = parse_udphdr(&c);
	if (port == PARSE_ERR_MALFORMED)
		return ST_MALFORMED;
	cfg = bpf_map_lookup_elem(&classifier_cfg, &zero);
	if (!cfg)
		return ST_OTHER;
	dcid_len = relay_port_dcid_len(cfg, port);
	if (dcid_len < 0)
		return ST_OTHER;
	st = parse_quic_short(&c, dcid_len, &ck, &r);
	if (st != ST_ELIGIBLE)
		return st;
	conn = bpf_map_lookup_elem(&classifier_conns, &ck);
	if (!conn)
		return ST_UNKNOWN_CONN;
	st = walk_to_datagram(&c, &r);
	if (st != ST_ELIGIBLE)
		return st;
	st = parse_moq_object_datagram(&c, &r);
	if (st != ST_ELIGIBLE)
		return st;
	tk->conn_id = conn->conn_id;
	tk->alias = r.alias;
	count_track(tk);
	return bpf_map_lookup_elem(&subscribed, tk) ? ST_ELIGIBLE : ST_UNKNOWN_TRACK;
}

SEC("xdp")
int classifier(struct xdp_md *ctx)
{
	struct track_key tk = {};
	int st = classify(ctx, &tk);

	count(st);
	return st == ST_UNKNOWN_TRACK ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
