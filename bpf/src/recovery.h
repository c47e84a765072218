/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Kernel-resident loss recovery for downstream (relay -> subscriber) connections (issue 5):
 * the sent-packet ring, RTT estimation (RFC 9002 section 5), packet-threshold loss detection
 * (RFC 9002 section 6.1.1) and NewReno (RFC 9002 section 7 / appendix B). The structs are in
 * structs.h (struct recovery_state), the maps in maps.h (MAPS_RECOVERY).
 *
 * recovery_on_sent() is called by the egress program for every packet it numbers;
 * recovery_on_ack() by client_ingress.bpf.c for every validated ACK frame. relay/recovery_model.py
 * is the independent Python model the tests compare this with, field by field: keep both in step.
 *
 * Integer arithmetic throughout (ns, bytes); divisions truncate, the model does the same.
 * Not done here (documented in docs/kernel-recovery.md): time-threshold loss and PTO (a user-space
 * sweep over this state), persistent congestion, app-limited checks.
 */
#ifndef MOQ_BPF_RECOVERY_H
#define MOQ_BPF_RECOVERY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"

#define RECOVERY_NONE (~0ULL)
#define K_PACKET_THRESHOLD 3               /* RFC 9002 section 6.1.1 */
#define K_DEFAULT_MDS 1200                 /* RFC 9002 B.2 max_datagram_size default */
#define K_DEFAULT_PASS_INTERVAL_US 5000

/* RFC 9002 B.2: kInitialWindow = min(10 * mds, max(14720, 2 * mds)); kMinimumWindow = 2 * mds. */
static __always_inline __u64 recovery_initial_window(__u64 mds)
{
	__u64 w = 2 * mds > 14720 ? 2 * mds : 14720;

	return 10 * mds < w ? 10 * mds : w;
}

/* RFC 9002 A.4 / B.4 OnPacketSent: record a packet the egress program numbered. The slot it lands in
 * may still hold an in-flight packet RECOVERY_RING packets older: that one leaves the ring with no
 * verdict (counted in evicted, its bytes leave bytes_in_flight so the window cannot stall). */
static __always_inline void recovery_on_sent(struct recovery_state *st, __u64 pn, __u32 size, __u64 now,
					     __u8 owner, __u64 stream_id, __u64 stream_off, __u32 stream_len,
					     __u8 stream_fin)
{
	struct sent_pkt *p = &st->ring[pn & (RECOVERY_RING - 1)];

	if (p->state == SENT_IN_FLIGHT || p->state == SENT_NEWLY_ACKED) {
		st->evicted += 1;
		st->bytes_in_flight -= p->size < st->bytes_in_flight ? p->size : st->bytes_in_flight;
	}
	p->pn = pn;
	p->sent_ns = now;
	p->size = size;
	p->owner = owner;
	p->state = SENT_IN_FLIGHT;
	p->stream_id = stream_id;
	p->stream_off = stream_off;
	p->stream_len = stream_len;
	p->stream_fin = stream_fin;
	if (st->largest_sent == RECOVERY_NONE || pn > st->largest_sent)
		st->largest_sent = pn;
	st->bytes_in_flight += size;
	st->sent_packets += 1;
	st->sent_bytes += size;
}

struct ack_ctx {
	struct recovery_state *st;
	struct ack_scratch *ack;
	struct ack_outcome *out;           /* = &ack->out (a map value: see struct ack_outcome) */
	void *loss_ring;                   /* loss_events (NULL: no records, e.g. in a test) */
	__u64 now;
	__u64 base;                        /* PN of iteration 0 (ascending walk of the ring) */
	__u32 conn_index;
	__u32 mds;
	__u32 app_limited;                 /* RFC 9002 7.8: the window was not full when the ACK came */
};

/* Whether the ACK covers pn. The walk is ascending by one and the ranges are disjoint and at least
 * one PN apart (RFC 9000 section 19.3.1: gap + 2), so the current range (out->r, from the lowest)
 * moves at most one step per PN: O(1) per packet, one verifier path. */
static __always_inline int ack_covers(struct ack_ctx *x, __u64 pn)
{
	__u32 r = x->out->r;

	if (r > RECOVERY_MAX_RANGES)
		return 0;
	if (pn > x->ack->hi[r]) {
		x->out->r = r = r - 1;  /* wraps past 0 to "no more ranges" */
		if (r > RECOVERY_MAX_RANGES)
			return 0;
	}
	return pn >= x->ack->lo[r] && pn <= x->ack->hi[r];
}

/* Before the walk: skip the ranges that end below its first PN (acknowledged PNs beyond the ring). */
static long ack_skip_cb(__u32 i, void *ctx)
{
	struct ack_ctx *x = ctx;
	__u32 r = x->out->r;

	if (r > RECOVERY_MAX_RANGES || x->ack->hi[r] >= x->base)
		return 1;
	x->out->r = r - 1;
	return 0;
}

/* The ring slot of the i-th packet of the ascending walk (callers check that it holds *pn: never
 * NULL, which clang would otherwise fold into a compare the verifier cannot follow). */
static __always_inline struct sent_pkt *walk_slot(struct ack_ctx *x, __u32 i, __u64 *pn)
{
	*pn = x->base + i;
	return &x->st->ring[*pn & (RECOVERY_RING - 1)];
}

/* Pass 1, RFC 9002 A.7 DetectAndRemoveAckedPackets: mark in-flight packets the ranges cover. */
static long ack_mark_cb(__u32 i, void *ctx)
{
	struct ack_ctx *x = ctx;
	struct sent_pkt *p;
	__u64 pn;

	p = walk_slot(x, i, &pn);
	/* ack_covers first: the range cursor must see every PN of the walk. */
	if (!ack_covers(x, pn) || p->pn != pn || p->state != SENT_IN_FLIGHT)
		return 0;
	p->state = SENT_NEWLY_ACKED;
	x->out->newly_acked += 1;
	if (p->owner == SENT_OWNER_USER)
		x->out->user_acked += 1;
	return 0;
}

/* RFC 9002 A.10 OnPacketsLost for one packet: out of flight, counted; a forwarded packet gets a loss
 * record (NULL ring: none). Returns 1 record written, -1 ring full, 0 no record wanted. */
static __always_inline int recovery_lose(struct recovery_state *st, struct sent_pkt *p, __u64 pn, void *loss_ring,
					 __u64 now, __u32 conn_index)
{
	struct loss_event *e;

	p->state = SENT_LOST;
	st->bytes_in_flight -= p->size < st->bytes_in_flight ? p->size : st->bytes_in_flight;
	st->lost_packets += 1;
	st->lost_bytes += p->size;
	if (p->owner != SENT_OWNER_FORWARDED || !loss_ring)
		return 0;
	e = bpf_ringbuf_reserve(loss_ring, sizeof(*e), 0);
	if (!e)
		return -1;
	e->ts_ns = now;
	e->pn = pn;
	e->sent_ns = p->sent_ns;
	e->stream_id = p->stream_id;
	e->stream_off = p->stream_off;
	e->conn_index = conn_index;
	e->size = p->size;
	e->stream_len = p->stream_len;
	e->owner = p->owner;
	e->stream_fin = p->stream_fin;
	e->_pad0[0] = e->_pad0[1] = 0;
	bpf_ringbuf_submit(e, 0);
	return 1;
}

/* Pass 2, RFC 9002 6.1.1 / A.10 DetectAndRemoveLostPackets (packet threshold only): in-flight
 * packets kPacketThreshold or more below the largest acknowledged are lost. */
static long ack_loss_cb(__u32 i, void *ctx)
{
	struct ack_ctx *x = ctx;
	struct recovery_state *st = x->st;
	struct sent_pkt *p;
	__u64 pn;

	p = walk_slot(x, i, &pn);
	if (p->pn != pn || p->state != SENT_IN_FLIGHT || pn > st->largest_acked ||
	    st->largest_acked - pn < K_PACKET_THRESHOLD)
		return 0;
	x->out->lost += 1;
	/* OnPacketsLost: the congestion event uses the largest lost packet's send time (ascending walk). */
	x->out->lost_sent_ns = p->sent_ns + 1;
	switch (recovery_lose(st, p, pn, x->loss_ring, x->now, x->conn_index)) {
	case 1:
		x->out->loss_records += 1;
		break;
	case -1:
		x->out->ring_full += 1;
		break;
	}
	return 0;
}

/* RFC 9002 B.6 OnCongestionEvent (NewReno, kLossReductionFactor 1/2). */
static __always_inline void recovery_congestion_event(struct recovery_state *st, __u64 sent_ns, __u64 now,
						      __u64 mds)
{
	/* B.5 InCongestionRecovery: a packet sent before the current recovery period started. */
	if (st->recovery_start_ns && sent_ns <= st->recovery_start_ns)
		return;
	st->recovery_start_ns = now;
	st->ssthresh = st->cwnd / 2;
	st->cwnd = st->ssthresh > 2 * mds ? st->ssthresh : 2 * mds;
	st->congestion_events += 1;
}

/* Pass 3, RFC 9002 B.5 OnPacketsAcked: bytes leave flight; slow start or congestion avoidance
 * (cwnd += mds * acked / cwnd per packet) outside the recovery period, and only when the window was
 * in use (7.8: an under-utilized window must not grow; the copies are sent at the publisher's rate,
 * not the window's, so a window grown while app-limited would hide a congested link from the drop
 * policy until the link's queue overflows). Ascending PN order. */
static long ack_apply_cb(__u32 i, void *ctx)
{
	struct ack_ctx *x = ctx;
	struct recovery_state *st = x->st;
	struct sent_pkt *p;
	__u64 pn;

	p = walk_slot(x, i, &pn);
	if (p->pn != pn || p->state != SENT_NEWLY_ACKED)
		return 0;
	p->state = SENT_ACKED;
	st->bytes_in_flight -= p->size < st->bytes_in_flight ? p->size : st->bytes_in_flight;
	st->acked_packets += 1;
	st->acked_bytes += p->size;
	if ((st->recovery_start_ns && p->sent_ns <= st->recovery_start_ns) || x->app_limited)
		return 0;
	if (st->cwnd < st->ssthresh)
		st->cwnd += p->size;
	else if (st->cwnd)
		st->cwnd += (__u64)x->mds * p->size / st->cwnd;
	return 0;
}

/* RFC 9002 section 5.3: RTT sample of the largest acknowledged packet. */
static __always_inline void recovery_rtt_sample(struct recovery_state *st, __u64 latest, __u64 ack_delay)
{
	__u64 adjusted = latest, diff;

	st->latest_rtt = latest;
	if (st->min_rtt == RECOVERY_NONE) {
		st->min_rtt = latest;
		st->smoothed_rtt = latest;
		st->rttvar = latest / 2;
		return;
	}
	if (latest < st->min_rtt)
		st->min_rtt = latest;
	if (latest >= st->min_rtt + ack_delay)
		adjusted = latest - ack_delay;
	diff = st->smoothed_rtt > adjusted ? st->smoothed_rtt - adjusted : adjusted - st->smoothed_rtt;
	st->rttvar = (3 * st->rttvar + diff) / 4;
	st->smoothed_rtt = (7 * st->smoothed_rtt + adjusted) / 8;
}

/* RFC 9002 A.7 OnAckReceived for one validated ACK frame (ranges within largest_sent). */
static __always_inline void recovery_on_ack(struct recovery_state *st, struct ack_scratch *ack, __u64 now,
					    const struct recovery_conn *rc, void *loss_ring)
{
	struct ack_outcome *out = &ack->out;
	struct ack_ctx x = {.st = st, .ack = ack, .out = out, .loss_ring = loss_ring, .now = now,
			    .conn_index = rc->conn_index,
			    .mds = rc->max_datagram_size ? rc->max_datagram_size : K_DEFAULT_MDS};
	struct sent_pkt *lp;
	__u64 ack_delay, max_delay, exp, ring_base, lowest, mark_base, n, loss_n;
	__u32 li;

	if (st->largest_sent == RECOVERY_NONE || !ack->nranges || ack->nranges > RECOVERY_MAX_RANGES + 1)
		return;
	/* Walk only the PNs the ACK can touch: from the lowest acknowledged (or the ring's oldest) to
	 * the largest acknowledged. decode_ack guaranteed largest <= largest_sent. */
	ring_base = st->largest_sent >= RECOVERY_RING - 1 ? st->largest_sent - (RECOVERY_RING - 1) : 0;
	li = ack->nranges - 1;
	barrier_var(li);   /* keep this bound: clang would fold it into the nranges check above */
	if (li > RECOVERY_MAX_RANGES)
		return;
	lowest = ack->lo[li];
	x.base = lowest > ring_base ? lowest : ring_base;
	n = ack->largest >= x.base ? ack->largest - x.base + 1 : 0;
	if (n > RECOVERY_RING)
		n = RECOVERY_RING;
	/* 7.8: under-utilized = less than one full-size packet of room left when the ACK arrived */
	x.app_limited = st->bytes_in_flight + x.mds <= st->cwnd;
	if (st->largest_acked == RECOVERY_NONE || ack->largest > st->largest_acked)
		st->largest_acked = ack->largest;
	__builtin_memset(out, 0, sizeof(*out));
	out->r = ack->nranges - 1;
	bpf_loop(RECOVERY_MAX_RANGES + 1, ack_skip_cb, &x, 0);
	bpf_loop(n, ack_mark_cb, &x, 0);
	if (!out->newly_acked)
		return;
	/* Section 5.1: a sample only when the largest acknowledged is newly acknowledged. */
	lp = &st->ring[ack->largest & (RECOVERY_RING - 1)];
	if (lp->pn == ack->largest && lp->state == SENT_NEWLY_ACKED && now >= lp->sent_ns) {
		/* Section 5.3: ack_delay = field << exponent (us), capped by max_ack_delay once the
		 * handshake is confirmed (always, for 1-RTT packets of an enabled connection). */
		exp = rc->ack_delay_exponent > 20 ? 20 : rc->ack_delay_exponent;
		ack_delay = ack->ack_delay > (1ULL << 40) ? (1ULL << 40) : ack->ack_delay;
		ack_delay = (ack_delay << exp) * 1000;
		max_delay = (__u64)rc->max_ack_delay_us * 1000;
		if (ack_delay > max_delay)
			ack_delay = max_delay;
		recovery_rtt_sample(st, now - lp->sent_ns, ack_delay);
		out->rtt_sampled = 1;
		/* B.7 ProcessECN: a higher ECN-CE count is a congestion event. */
		if (ack->ecn && ack->ecn_ce > st->ecn_ce) {
			st->ecn_ce = ack->ecn_ce;
			recovery_congestion_event(st, lp->sent_ns, now, x.mds);
		}
	}
	mark_base = x.base;
	x.base = ring_base;   /* loss: every in-flight packet up to the largest acknowledged */
	loss_n = st->largest_acked >= ring_base ? st->largest_acked - ring_base + 1 : 0;
	bpf_loop(loss_n > RECOVERY_RING ? RECOVERY_RING : loss_n, ack_loss_cb, &x, 0);
	if (out->lost_sent_ns)
		recovery_congestion_event(st, out->lost_sent_ns - 1, now, x.mds);
	x.base = mark_base;
	bpf_loop(n, ack_apply_cb, &x, 0);
}

/* ---- The sweep (RFC 9002 6.1.2 time threshold, 6.2.1 PTO) ---------------------------------------
 * ACKs drive everything above; what needs a clock without an ACK runs from recovery_sweep, which user
 * space runs a few times per RTT per connection (BPF_PROG_TEST_RUN: aggregate work, not per packet).
 * It also recounts bytes_in_flight from the ring: the egress and ingress programs update the state
 * from different CPUs without a lock, so a lost update must not stay in the window for ever. */
#define K_TIME_THRESHOLD_NUM 9                 /* RFC 9002 6.1.2: kTimeThreshold = 9/8 */
#define K_TIME_THRESHOLD_DEN 8
#define K_GRANULARITY_NS 1000000ULL            /* kGranularity = 1 ms */
#define K_INITIAL_RTT_NS 333000000ULL          /* RFC 9002 6.2.2: kInitialRtt */
#define SWEEP_PTO_DUE (1U << 16)               /* retval bit: a probe timeout is due */

struct sweep_ctx {
	struct recovery_state *st;
	void *loss_ring;
	__u64 now;
	__u64 loss_delay;
	__u64 in_flight;                       /* recount */
	__u64 newest_sent;                     /* newest in-flight send time */
	__u64 lost_sent_ns;                    /* largest lost packet's send time + 1 */
	__u32 lost;
	__u32 records;
	__u32 conn_index;
};

static long sweep_cb(__u32 i, void *ctx)
{
	struct sweep_ctx *x = ctx;
	struct recovery_state *st = x->st;
	struct sent_pkt *p = &st->ring[i & (RECOVERY_RING - 1)];

	if (p->state != SENT_IN_FLIGHT)
		return 0;
	/* 6.1.2: lost when sent before an acknowledged packet and at least loss_delay ago. */
	if (st->largest_acked != RECOVERY_NONE && p->pn < st->largest_acked && x->loss_delay &&
	    p->sent_ns + x->loss_delay <= x->now) {
		x->lost += 1;
		if (p->sent_ns + 1 > x->lost_sent_ns)
			x->lost_sent_ns = p->sent_ns + 1;
		if (recovery_lose(st, p, p->pn, x->loss_ring, x->now, x->conn_index) == 1)
			x->records += 1;
		return 0;
	}
	x->in_flight += p->size;
	if (p->sent_ns > x->newest_sent)
		x->newest_sent = p->sent_ns;
	return 0;
}

/* One sweep of one connection. Returns the packets declared lost, | SWEEP_PTO_DUE when in-flight
 * packets exist and none was sent within a PTO (RFC 9002 6.2.1: user space sends the probe). */
static __always_inline __u32 recovery_sweep(struct recovery_state *st, __u64 now, __u64 max_ack_delay_ns,
					    __u32 mds, void *loss_ring, __u32 conn_index, __u32 *records)
{
	struct sweep_ctx x = {.st = st, .loss_ring = loss_ring, .now = now, .conn_index = conn_index};
	__u64 rtt, pto, var;
	__u32 ret;

	if (st->min_rtt != RECOVERY_NONE) {
		rtt = st->smoothed_rtt > st->latest_rtt ? st->smoothed_rtt : st->latest_rtt;
		x.loss_delay = rtt * K_TIME_THRESHOLD_NUM / K_TIME_THRESHOLD_DEN;
		if (x.loss_delay < K_GRANULARITY_NS)
			x.loss_delay = K_GRANULARITY_NS;
	}
	bpf_loop(RECOVERY_RING, sweep_cb, &x, 0);
	st->bytes_in_flight = x.in_flight;
	if (x.lost_sent_ns)
		recovery_congestion_event(st, x.lost_sent_ns - 1, now, mds ? mds : K_DEFAULT_MDS);
	*records = x.records;
	ret = x.lost > 0xffff ? 0xffff : x.lost;
	if (!x.in_flight)
		return ret;
	/* 6.2.1: PTO = smoothed_rtt + max(4 * rttvar, kGranularity) + max_ack_delay (kInitialRtt before
	 * the first sample, 6.2.2). */
	if (st->min_rtt == RECOVERY_NONE) {
		rtt = K_INITIAL_RTT_NS;
		var = K_INITIAL_RTT_NS / 2;
	} else {
		rtt = st->smoothed_rtt;
		var = st->rttvar;
	}
	pto = rtt + (4 * var > K_GRANULARITY_NS ? 4 * var : K_GRANULARITY_NS) + max_ack_delay_ns;
	if (x.newest_sent + pto <= now)
		ret |= SWEEP_PTO_DUE;
	return ret;
}

#endif /* MOQ_BPF_RECOVERY_H */
