/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TC ingress, server side (DESIGN section 3): find packets that carry a forwardable MoQT object
 * of a fast-path track and clone each one once per downstream subscriber of the track to the
 * client-side port's egress (client_egress.bpf.c rewrites the copy). The original always passes up
 * unchanged (TC_ACT_OK), including malformed packets (invariant 5).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAPS_SERVER_INGRESS
#include "maps.h"
#include "parsing.h"
#include "structs.h"

/* Set by the loader before load (libbpf-bootstrap's read-only globals). */
const volatile struct ingress_config cfg = {};

/* Keep the stat enum in the object's BTF so bpf/structs.py can be checked against it. */
const volatile enum ingress_stat ingress_stat_btf_anchor = ST_MAX;

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&ingress_stats, &stat);

	if (n)
		*n += 1;
}

static __always_inline int classify(struct __sk_buff *skb, struct parse_result *r)
{
	struct cursor c;
	struct cid_key ck = {};
	struct track_key tk = {};
	struct upstream_conn *conn;
	struct fast_track *track;
	__u32 len = skb->len;
	int proto, port, dcid_len, st;

	if (len > PARSE_MAX_OFF)
		return ST_OVERSIZED;
	cursor_init(&c, skb);
	if (c.data + len > c.data_end) {
		/* Non-linear skb: make the whole packet directly readable (rare on ingress). */
		if (bpf_skb_pull_data(skb, len))
			return ST_MALFORMED;
		cursor_init(&c, skb);
	}
	c.lim = len;

	proto = parse_ethhdr(&c);
	if (proto < 0)
		return ST_OTHER;
	r->l3_off = c.off;
	if (proto == ETH_P_IP) {
		st = parse_ipv4(&c);
		r->ip_version = 4;
	} else if (proto == ETH_P_IPV6) {
		st = parse_ipv6(&c);
		r->ip_version = 6;
	} else {
		return ST_OTHER;
	}
	if (st < 0)
		return st == PARSE_ERR_OTHER ? ST_OTHER : ST_MALFORMED;
	r->l4_off = c.off;
	port = parse_udphdr(&c);
	if (port == PARSE_ERR_MALFORMED)
		return ST_MALFORMED;
	dcid_len = relay_port_dcid_len(&cfg, port);
	if (dcid_len < 0)
		return ST_OTHER;

	st = parse_quic_short(&c, dcid_len, &ck, r);
	if (st != ST_ELIGIBLE)
		return st;
	conn = bpf_map_lookup_elem(&upstream_conns, &ck);
	if (!conn)
		return ST_UNKNOWN_CONN;
	r->conn_id = conn->conn_id;

	st = walk_to_payload(&c, r, 1);
	if (st != ST_ELIGIBLE)
		return st;
	if (is_stream_frame(r)) {
		/* A subgroup stream the controller registered once user space had its header. */
		struct stream_key sk = {.conn_id = r->conn_id, .stream_id = r->stream_id};

		track = bpf_map_lookup_elem(&fast_streams, &sk);
		if (!track)
			return ST_UNKNOWN_FRAME;
		r->track_id = track->track_id;
		return ST_ELIGIBLE;
	}
	st = parse_moq_object_datagram(&c, r);
	if (st != ST_ELIGIBLE)
		return st;

	tk.conn_id = r->conn_id;
	tk.alias = r->alias;
	track = bpf_map_lookup_elem(&fast_tracks, &tk);
	if (!track)
		return ST_UNKNOWN_TRACK;
	r->track_id = track->track_id;
	return ST_ELIGIBLE;
}

/* One clone per subscriber of the track. The slot (and the upstream DCID length, which the egress
 * parser needs) ride in skb->mark: bpf_clone_redirect copies it into the clone, nothing is shared
 * between CPUs, and it holds whatever queueing happens between the two hooks. The original's mark
 * is restored afterwards. */
static __always_inline void fan_out(struct __sk_buff *skb, const struct parse_result *r)
{
	__u32 track_id = r->track_id, mark = skb->mark, ok = 0, failed = 0;
	struct track_subs *subs = bpf_map_lookup_elem(&track_subs, &track_id);
	__u64 *n;
	__u32 key;

	if (!subs)
		return;
	if (subs->count && !is_stream_frame(r)) {
		/* before the copies: user space reads the original only after this program returns */
		struct object_key obj = {.track_id = track_id, .group = r->group, .object = r->object};
		__u32 copies = subs->count;

		bpf_map_update_elem(&cloned_objects, &obj, &copies, BPF_ANY);
	}
	for (int i = 0; i < TRACK_SUBS_PER_TRACK; i++) {
		if (i >= subs->count)
			break;
		skb->mark = FASTPATH_MARK_MAGIC | ((__u32)r->dcid_len << 16) | (subs->sub[i].slot & 0xffff);
		if (bpf_clone_redirect(skb, subs->sub[i].ifindex, 0))
			failed++;
		else
			ok++;
	}
	skb->mark = mark;
	key = ST_CLONED;
	n = bpf_map_lookup_elem(&ingress_stats, &key);
	if (n)
		*n += ok;
	key = ST_CLONE_FAILED;
	n = bpf_map_lookup_elem(&ingress_stats, &key);
	if (n)
		*n += failed;
}

SEC("tc")
int server_ingress(struct __sk_buff *skb)
{
	struct parse_result r = {};
	__u32 zero = 0;
	int st = classify(skb, &r);

	count(st);
	if (st == ST_ELIGIBLE) {
		bpf_map_update_elem(&last_parse, &zero, &r, BPF_ANY);
		fan_out(skb, &r);
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
