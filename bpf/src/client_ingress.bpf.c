/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TC ingress, client side (issue 5): 1-RTT packets from subscribers of connections with kernel
 * recovery. Learns the subscriber's address, applies its ACK frames to the connection's
 * recovery_state (recovery.h) and decides whether the packet still goes up (CI_PASS) or was
 * fully handled here (TC_ACT_SHOT). Anything that is not a well-formed 1-RTT packet of such a
 * connection goes up unchanged with the state untouched (invariant 5).
 *
 * It runs first on the relay port's TC ingress, before server_ingress (the relay attaches it with a
 * lower prio number): CI_PASS is TC_ACT_UNSPEC, "not claimed", so tc runs the next filter, and the
 * default verdict of the hook (the stack) applies after the last one.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAPS_RECOVERY
#include "maps.h"
#include "parsing.h"
#include "structs.h"
#include "recovery.h"

#define CI_PASS TC_ACT_UNSPEC

/* The relay's client-side UDP ports and the length of the CIDs the relay issues on each. */
const volatile struct ingress_config cfg = {};

/* Keep the stat enum in the object's BTF so bpf/structs.py can be checked against it. */
const volatile enum recovery_stat recovery_stat_btf_anchor = RS_MAX;
/* ... and the loss record (ring buffers carry no value type in their map definition). */
const volatile struct loss_event loss_event_btf_anchor = {};

#ifdef RECOVERY_TEST
/* Test clock (recovery_test.bpf.c only): when entry 0 is non-zero, it is "now" for every decision. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} test_clock SEC(".maps");

static __always_inline __u64 now_ns(void)
{
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&test_clock, &zero);

	return t && *t ? *t : bpf_ktime_get_ns();
}
#else
static __always_inline __u64 now_ns(void)
{
	return bpf_ktime_get_ns();
}
#endif

static __always_inline void rs_count(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&recovery_stats, &stat);

	if (v && n)
		*v += n;
}

/* RFC 9000 section 19.3: decode and validate one ACK frame (type consumed) into a. Every range must
 * lie within 0..largest_sent (acknowledging an unsent PN is a PROTOCOL_VIOLATION the QUIC stack
 * answers, section 13.1). Returns 0, RS_MALFORMED or RS_TOO_COMPLEX. */
static __always_inline int decode_ack(struct cursor *c, __u8 type, struct ack_scratch *a, __u64 largest_sent)
{
	__u64 largest, delay, count, first, gap, len, lo, v;

	if (parse_varint(c, &largest) < 0 || parse_varint(c, &delay) < 0 ||
	    parse_varint(c, &count) < 0 || parse_varint(c, &first) < 0)
		return RS_MALFORMED;
	if (first > largest || largest_sent == RECOVERY_NONE || largest > largest_sent)
		return RS_MALFORMED;
	if (count > RECOVERY_MAX_RANGES)
		return RS_TOO_COMPLEX;
	a->largest = largest;
	a->ack_delay = delay;
	a->ecn = type == QUIC_FRAME_ACK_ECN;
	a->ecn_ce = 0;
	a->hi[0] = largest;
	a->lo[0] = lo = largest - first;
	a->nranges = 1;
	for (int i = 1; i < RECOVERY_MAX_RANGES + 1; i++) {
		if (i > count)
			break;
		if (cursor_widen(c))
			return RS_MALFORMED;
		/* Section 19.3.1: next largest = previous smallest - gap - 2, smallest = largest - length. */
		if (parse_varint(c, &gap) < 0 || parse_varint(c, &len) < 0)
			return RS_MALFORMED;
		if (lo < gap + 2 || lo - gap - 2 < len)
			return RS_MALFORMED;
		a->hi[i] = lo - gap - 2;
		lo = lo - gap - 2 - len;
		a->lo[i] = lo;
		a->nranges = i + 1;
	}
	if (a->ecn) {   /* section 19.3.2: ECT0, ECT1, ECN-CE counts */
		if (parse_varint(c, &v) < 0 || parse_varint(c, &v) < 0 || parse_varint(c, &v) < 0)
			return RS_MALFORMED;
		a->ecn_ce = v;
	}
	return 0;
}

/* What the frame walk found. */
struct walk_result {
	__u32 acks;                        /* ACK frames */
	__u32 other;                       /* frames other than PADDING/PING/ACK */
	__u32 ping;                        /* a PING seen: ack-eliciting (RFC 9000 section 13.2.1) */
	__u8 ack_type;                     /* the ACK frame's type, when one stopped the walk */
};

/* RFC 9000 section 19: walk frames. PADDING and PING (no body) are stepped over, PING counted: the packet
 * is then ack-eliciting (section 13.2.1) and must reach aioquic, which owes the peer an ACK for it, while
 * the ACK frame beside it is still applied here. An ACK frame stops the walk with
 * the cursor past its type byte (stop_at_ack) or is refused (a second ACK: the packet goes up whole);
 * the first other frame ends the walk (the packet goes up; the ACK before it is still applied).
 * Returns 0 or a stat. The ACK is decoded outside this loop, so the verifier sees the two loops
 * one after the other, not nested. */
static __always_inline int walk_frames(struct cursor *c, struct walk_result *w, int stop_at_ack)
{
	__u8 *t;

	for (int i = 0; i < MAX_FRAMES; i++) {
		if (c->off >= c->lim)
			return 0;
		if (cursor_widen(c))
			return RS_MALFORMED;
		t = cursor_take(c, 1);
		if (!t)
			return RS_MALFORMED;
		if (*t == QUIC_FRAME_PADDING)
			continue;
		if (*t == QUIC_FRAME_PING) {
			w->ping = 1;   /* a flag, not a count: fewer verifier states */
			continue;
		}
		if (*t == QUIC_FRAME_ACK || *t == QUIC_FRAME_ACK_ECN) {
			if (!stop_at_ack)   /* one ACK frame per packet in the kernel; more go up whole */
				return RS_TOO_COMPLEX;
			w->ack_type = *t;
			return 0;
		}
		w->other += 1;
		return 0;
	}
	/* PADDING usually fills the rest: a run of zeros to the end is fine. */
	return c->off >= c->lim ? 0 : RS_TOO_COMPLEX;
}

/* The whole payload: frames before the ACK, the ACK decoded into a, the frames after it. */
static __always_inline int parse_payload(struct cursor *c, struct ack_scratch *a, __u64 largest_sent,
					 struct walk_result *w)
{
	int st = walk_frames(c, w, 1);

	if (st || !w->ack_type || w->other)
		return st;
	st = decode_ack(c, w->ack_type, a, largest_sent);
	if (st)
		return st;
	w->acks = 1;
	if (cursor_widen(c))
		return RS_MALFORMED;
	return walk_frames(c, w, 0);
}

/* Issue 5 part 3: does this packet still go up to user space? Returns the RS_PASS_* reason, or
 * RS_CONSUMED. Order = priority of the reasons (one counter per packet). */
static __always_inline int pass_up_reason(const struct walk_result *w, const struct ack_outcome *o,
					  struct recovery_state *st, const struct recovery_conn *rc, __u64 now)
{
	__u64 interval = (__u64)(rc->pass_interval_us ? rc->pass_interval_us : K_DEFAULT_PASS_INTERVAL_US) * 1000;

	if (w->other || w->ping)
		return RS_PASS_OTHER_FRAMES;   /* aioquic must see every non-ACK frame; a PING it must ACK */
	if (o->user_acked)
		return RS_PASS_USER_ACKED;     /* aioquic's own packets' recovery */
	if (o->lost)
		return RS_PASS_LOSS;           /* aioquic learns of the loss promptly */
	if (now - st->last_pass_ns >= interval)
		return RS_PASS_PERIODIC;       /* idle timer, RTT and ACK state in aioquic stay fresh */
	return RS_CONSUMED;
}

static __always_inline void learn_addr(__u32 idx, struct cursor *c, __u64 l3_off, int ipv, __u64 l4_off, __u64 now)
{
	struct subscriber_addr *sa = bpf_map_lookup_elem(&subscriber_addrs, &idx);
	__u8 *ip;
	__u16 *udp;

	if (!sa || l3_off > 64 || l4_off > 128)
		return;
	ip = c->data + l3_off;
	udp = c->data + l4_off;
	if ((void *)(ip + 40) > c->data_end || (void *)(udp + 1) > c->data_end)
		return;
	if (ipv == 4) {
		__builtin_memcpy(sa->ip, ip + 12, 4);
		__builtin_memset(sa->ip + 4, 0, 12);
	} else {
		__builtin_memcpy(sa->ip, ip + 8, 16);
	}
	sa->port = bpf_ntohs(*udp);
	sa->ip_version = ipv;
	sa->last_seen_ns = now;
	sa->packets += 1;
}

SEC("tc")
int client_ingress(struct __sk_buff *skb)
{
	struct cursor c;
	struct cid_key ck = {};
	struct parse_result r = {};
	struct walk_result w = {};
	struct ack_outcome none = {}, *o = &none;
	struct recovery_conn *rc;
	struct recovery_state *st;
	struct ack_scratch *a;
	__u32 zero = 0, idx, len = skb->len;
	__u64 l3_off, l4_off, now;
	int proto, ipv, port, dcid_len, s, reason;

	if (len > PARSE_MAX_OFF)
		goto not_ours;
	cursor_init(&c, skb);
	if (c.data + len > c.data_end) {
		if (bpf_skb_pull_data(skb, len))
			goto not_ours;
		cursor_init(&c, skb);
	}
	c.lim = len;
	proto = parse_ethhdr(&c);
	l3_off = c.off;
	if (proto == ETH_P_IP) {
		s = parse_ipv4(&c);
		ipv = 4;
	} else if (proto == ETH_P_IPV6) {
		s = parse_ipv6(&c);
		ipv = 6;
	} else {
		goto not_ours;
	}
	if (s < 0)
		goto not_ours;
	l4_off = c.off;
	port = parse_udphdr(&c);
	if (port < 0)
		goto not_ours;
	dcid_len = relay_port_dcid_len(&cfg, port);
	if (dcid_len < 0)
		goto not_ours;
	if (parse_quic_short(&c, dcid_len, &ck, &r) != ST_ELIGIBLE)
		goto not_ours;
	rc = bpf_map_lookup_elem(&recovery_conns, &ck);
	if (!rc)
		goto not_ours;
	idx = rc->conn_index;
	st = bpf_map_lookup_elem(&recovery_state, &idx);
	a = bpf_map_lookup_elem(&ack_scratch, &zero);
	if (!st || !a)
		goto not_ours;
	now = now_ns();
	learn_addr(idx, &c, l3_off, ipv, l4_off, now);

	s = parse_payload(&c, a, st->largest_sent, &w);
	if (s) {
		rs_count(s, 1);   /* up unchanged, state untouched */
		return CI_PASS;
	}
	if (w.acks) {
		recovery_on_ack(st, a, now, rc, &loss_events);
		o = &a->out;
		rs_count(RS_ACK_FRAMES, 1);
		rs_count(RS_ACKED, o->newly_acked);
		rs_count(RS_LOST, o->lost);
		rs_count(RS_LOSS_RECORDS, o->loss_records);
		rs_count(RS_RING_FULL, o->ring_full);
	}
	reason = pass_up_reason(&w, o, st, rc, now);
	rs_count(reason, 1);
	if (reason == RS_CONSUMED)
		return TC_ACT_SHOT;
	st->last_pass_ns = now;
	return CI_PASS;

not_ours:
	rs_count(RS_NOT_OURS, 1);
	return CI_PASS;
}

/* Run by user space through BPF_PROG_TEST_RUN with a struct recovery_sweep_cmd after 14 bytes (never
 * attached): the time-threshold and PTO half of recovery (recovery.h) for one active connection, its
 * aggregate record written to recovery_figures. One connection per run: recovery_sweep walks the ring
 * with bpf_loop, and neither a bpf_loop over connections (nested callbacks are refused) nor a bounded
 * loop (the verifier re-explores the callback per iteration: > 1M instructions at 8) takes several.
 * Returns 1 swept, 0 inactive, (u32)-1 bad command. */
SEC("tc")
int recovery_sweep_prog(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct recovery_sweep_cmd *cmd = data + 14;
	struct recovery_figures *f;
	struct recovery_state *st;
	__u32 idx, records = 0, ret;
	__u64 now;

	if ((void *)(cmd + 1) > end)
		return -1;
	idx = cmd->conn_index;
	f = bpf_map_lookup_elem(&recovery_figures, &idx);
	st = bpf_map_lookup_elem(&recovery_state, &idx);
	if (!f || !st)
		return -1;
	if (!f->active)
		return 0;
	now = cmd->now_ns ? cmd->now_ns : now_ns();
	ret = recovery_sweep(st, now, f->max_ack_delay_ns, f->max_datagram_size, &loss_events, idx, &records);
	f->swept_ns = now;
	f->bytes_in_flight = st->bytes_in_flight;
	f->cwnd = st->cwnd;
	f->ssthresh = st->ssthresh;
	f->smoothed_rtt = st->smoothed_rtt;
	f->min_rtt = st->min_rtt;
	f->latest_rtt = st->latest_rtt;
	f->rttvar = st->rttvar;
	f->sent_packets = st->sent_packets;
	f->sent_bytes = st->sent_bytes;
	f->acked_packets = st->acked_packets;
	f->lost_packets = st->lost_packets;
	f->evicted = st->evicted;
	f->largest_sent = st->largest_sent;
	f->congestion_events = st->congestion_events;
	f->lost_now = ret & 0xffff;
	f->pto_due = (ret & SWEEP_PTO_DUE) ? 1 : 0;
	f->congested = st->congested;
	f->congestion_onsets = st->congestion_onsets;
	rs_count(RS_SWEEPS, 1);
	rs_count(RS_TIME_LOST, ret & 0xffff);
	rs_count(RS_LOSS_RECORDS, records);
	rs_count(RS_PTO_DUE, f->pto_due);
	return 1;
}

/* Keep the sweep command in the object's BTF for the mirror check. */
const volatile struct recovery_sweep_cmd recovery_sweep_cmd_btf_anchor = {};
const volatile struct recovery_figures recovery_figures_btf_anchor = {};

char LICENSE[] SEC("license") = "Apache-2.0";
