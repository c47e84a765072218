/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TC egress, client side (DESIGN section 3): turn each clone made by server_ingress into a packet
 * of one downstream connection, and renumber the 1-RTT packets user space sends on connections
 * the fast path owns (invariant 1: one packet-number authority). Every packet sent with a
 * program-assigned PN is reported on reg_events so user space registers it (invariant 2).
 *
 * A clone is recognised by skb->mark (FASTPATH_MARK_MAGIC | upstream DCID length | slot, set by
 * server_ingress); everything else is a user-space packet or not ours and passes untouched unless
 * its DCID belongs to an enabled downstream connection.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAPS_CLIENT_EGRESS
#define MAPS_RECOVERY_STATE
#include "maps.h"
#include "parsing.h"
#include "structs.h"
#include "recovery.h"

/* Frames before the DATAGRAM frame (PADDING, PING, ACK) are overwritten with PADDING in a copy:
 * the ACKs acknowledge the upstream connection's packets, not the subscriber's (RFC 9000 19.3). */
#define ZERO_ROOM 256
/* Largest UDP segment the checksum loop covers (32 chunks of 512 bytes). */
#define CSUM_CHUNK 512
#define CSUM_CHUNKS 32

const volatile struct egress_config egress_cfg = {};
/* Keep the enum and the ring record in the object's BTF for the mirror check. */
const volatile enum egress_stat egress_stat_btf_anchor = EG_MAX;
const volatile struct reg_event reg_event_btf_anchor = {};
static const __u8 zero_room[ZERO_ROOM] = {};

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&egress_stats, &stat);

	if (n)
		*n += 1;
}

static __always_inline int drop(__u32 stat, struct downstream_state *ds)
{
	count(stat);
	if (ds)
		__sync_fetch_and_add(&ds->dropped, 1);
	return TC_ACT_SHOT;
}

/* Ethernet, IPv4/IPv6, UDP (the same checks as server_ingress). Returns the UDP source port, or
 * < 0 when the packet is not UDP over IP. */
static __always_inline int parse_l2_l4(struct __sk_buff *skb, struct cursor *c, struct parse_result *r)
{
	__u32 len = skb->len;
	struct udphdr *udp;
	int proto, st;

	if (len > PARSE_MAX_OFF)
		return -1;
	cursor_init(c, skb);
	if (c->data + len > c->data_end) {
		if (bpf_skb_pull_data(skb, len))
			return -1;
		cursor_init(c, skb);
	}
	c->lim = len;
	proto = parse_ethhdr(c);
	r->l3_off = c->off;
	if (proto == ETH_P_IP) {
		st = parse_ipv4(c);
		r->ip_version = 4;
	} else if (proto == ETH_P_IPV6) {
		st = parse_ipv6(c);
		r->ip_version = 6;
	} else {
		return -1;
	}
	if (st < 0)
		return -1;
	r->l4_off = c->off;
	udp = cursor_ptr(c, sizeof(*udp));
	if (!udp || parse_udphdr(c) < 0)
		return -1;
	return bpf_ntohs(udp->source);
}

static __always_inline int relay_port(__u32 port)
{
#pragma unroll
	for (int i = 0; i < MAX_RELAY_PORTS; i++) {
		if (egress_cfg.port[i] == 0)
			break;
		if (egress_cfg.port[i] == port)
			return 1;
	}
	return 0;
}

/* RFC 9000 appendix A.2: the encoding must cover twice the distance to the largest acknowledged
 * PN, i.e. num_unacked <= 2^(8*len - 1). Keep the packet's length unless that forces a longer
 * one. Returns the length, or 0 when even 4 bytes cannot encode it. */
static __always_inline __u32 pn_encode_len(__u64 pn, __u64 largest_acked, __u32 len)
{
	__u64 unacked = largest_acked == ~0ULL ? pn + 1 : pn - largest_acked;
	__u32 need;

	if (largest_acked != ~0ULL && pn <= largest_acked)
		return 0;
	need = unacked <= 0x80 ? 1 : unacked <= 0x8000 ? 2 : unacked <= 0x800000 ? 3 :
	       unacked <= 0x80000000ULL ? 4 : 0;
	if (!need)
		return 0;
	return need > len ? need : len;
}

static __always_inline __u32 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)sum & 0xffff;
}

/* RFC 791 section 3.1: the IPv4 header checksum over the (ihl*4-byte) header. */
static __always_inline int ipv4_csum(struct __sk_buff *skb, __u32 l3, __u32 hlen)
{
	__u8 hdr[60];
	__u16 check = 0;
	__s64 sum;

	if (hlen < 20 || hlen > 60 || (hlen & 3))
		return -1;
	if (bpf_skb_store_bytes(skb, l3 + 10, &check, 2, 0) || bpf_skb_load_bytes(skb, l3, hdr, hlen))
		return -1;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)hdr, hlen, 0);
	if (sum < 0)
		return -1;
	check = ~csum_fold(sum);
	return bpf_skb_store_bytes(skb, l3 + 10, &check, 2, 0) ? -1 : 0;
}

/* RFC 768 / RFC 8200 section 8.1: the full UDP checksum, pseudo-header included. A copy's
 * checksum is recomputed, not patched: the DCID and PN resize shift the payload's 16-bit
 * alignment, and the incoming field may be 0 (IPv4) or partial. */
static __always_inline int udp_csum_full(struct __sk_buff *skb, __u32 l3, __u32 l4, int v6, __u64 udp_len)
{
	struct csum_scratch *s;
	__u32 ph[10] = {}, zero = 0;
	__u16 check = 0;
	__s64 sum;

	s = bpf_map_lookup_elem(&csum_scratch, &zero);
	if (!s || bpf_skb_store_bytes(skb, l4 + 6, &check, 2, 0))
		return -1;
	if (v6) {
		if (bpf_skb_load_bytes(skb, l3 + 8, ph, 32))
			return -1;
		ph[8] = bpf_htonl((__u32)udp_len);
		ph[9] = bpf_htonl(IPPROTO_UDP);
		sum = bpf_csum_diff(NULL, 0, ph, 40, 0);
	} else {
		if (bpf_skb_load_bytes(skb, l3 + 12, ph, 8))
			return -1;
		ph[2] = bpf_htonl((IPPROTO_UDP << 16) | (__u32)udp_len);
		sum = bpf_csum_diff(NULL, 0, ph, 12, 0);
	}
	for (int i = 0; i < CSUM_CHUNKS; i++) {
		__u64 off = (__u64)i * CSUM_CHUNK, rem, n;

		if (sum < 0 || off >= udp_len)
			break;
		rem = udp_len - off;
		if (rem >= CSUM_CHUNK) {
			if (bpf_skb_load_bytes(skb, l4 + off, s->buf, CSUM_CHUNK))
				return -1;
			sum = bpf_csum_diff(NULL, 0, (__be32 *)s->buf, CSUM_CHUNK, sum);
			continue;
		}
		n = rem;
		asm volatile("%[n] &= 511" : [n] "+r"(n)); /* kept: tells the verifier n < CSUM_CHUNK */
		if (n < 1)
			break;
		if (bpf_skb_load_bytes(skb, l4 + off, s->buf, n))
			return -1;
		s->buf[n] = 0; /* an odd tail is padded with zero (RFC 768) */
		s->buf[n + 1] = 0;
		s->buf[n + 2] = 0;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)s->buf, (n + 3) & ~3ULL, sum);
		break;
	}
	if (sum < 0)
		return -1;
	check = ~csum_fold(sum);
	if (check == 0)
		check = 0xffff; /* RFC 768: a computed 0 is sent as all ones */
	return bpf_skb_store_bytes(skb, l4 + 6, &check, 2, 0) ? -1 : 0;
}

/* RFC 9000 section 16: store v as a varint of exactly len (1, 2, 4, 8) bytes. */
static __always_inline int store_varint(struct __sk_buff *skb, __u32 off, __u64 v, __u32 len)
{
	__u64 prefix, be;

	if (len != 1 && len != 2 && len != 4 && len != 8)
		return -1;
	prefix = len == 1 ? 0 : len == 2 ? 1 : len == 4 ? 2 : 3;
	v &= ~0ULL >> (66 - 8 * len);
	v |= prefix << (8 * len - 2);
	be = bpf_cpu_to_be64(v << (64 - 8 * len));
	return bpf_skb_store_bytes(skb, off, &be, len, 0);
}

#define NOT_OURS -1

/* Rewrite one packet for conn. Clone: everything; user-space packet: the QUIC header only. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct parse_result *r,
				   struct downstream_conn *conn, struct downstream_state *ds, __u32 slot,
				   int clone, const struct slot_stream *stream)
{
	__u32 l3 = r->l3_off, l4 = r->l4_off, old_hdr, new_hdr, udp_len, pn_len, dcid_len, hlen;
	__u32 kind = stream ? REG_KIND_STREAM : clone ? REG_KIND_CLONE : REG_KIND_USER, window[7], window_new[7];
	__u8 first, udph[12];
	__u16 be16;
	__u32 be32;
	struct recovery_state *rs = NULL;
	struct reg_event *ev;
	int delta, have_window = 0;
	__u64 pn, now;
	__s64 diff;

	if (conn->ip_version != r->ip_version)
		return drop(EG_UNSUPPORTED, ds);
	dcid_len = conn->dcid_len;
	if (dcid_len > QUIC_MAX_CID_LEN)
		return drop(EG_UNSUPPORTED, ds);
	/* Kernel recovery (issue 5): the connection's RFC 9002 state, seeded by user space first. */
	if (conn->recovery) {
		rs = bpf_map_lookup_elem(&recovery_state, &conn->conn_index);
		if (!rs)
			return drop(EG_NO_SUBSCRIBER, ds);
	}
	pn = __sync_fetch_and_add(&ds->next_pn, 1);
	pn_len = pn_encode_len(pn, rs ? rs->largest_acked : conn->largest_acked, r->pn_len);
	if (pn_len < 1 || pn_len > 4)
		return drop(EG_PN_UNENCODABLE, ds);
	old_hdr = 9 + r->dcid_len + r->pn_len;   /* UDP header + first byte + DCID + PN */
	new_hdr = 9 + dcid_len + pn_len;
	delta = (int)new_hdr - (int)old_hdr;
	hlen = l4 - l3;
	udp_len = r->payload_end + QUIC_TAG_LEN - l4;
	if (bpf_skb_load_bytes(skb, l4, udph, 9))
		return drop(EG_MALFORMED, ds);
	first = udph[8];
	if (!clone && delta == 0 && !bpf_skb_load_bytes(skb, l4 + 8, window, sizeof(window)))
		have_window = 1;

	if (delta) {
		if (r->ip_version == 4 && hlen != 20)
			return drop(EG_UNSUPPORTED, ds);
		/* BPF_ADJ_ROOM_NET adds/removes room right after the fixed IP header, i.e. at the UDP
		 * header, which is rewritten below together with the QUIC header it precedes. */
		if (bpf_skb_adjust_room(skb, delta, BPF_ADJ_ROOM_NET, 0))
			return drop(EG_ADJUST_FAILED, ds);
		udp_len += delta;
		if (r->ip_version == 4) {
			be16 = bpf_htons(hlen + udp_len);
			if (bpf_skb_store_bytes(skb, l3 + 2, &be16, 2, 0))
				return drop(EG_ADJUST_FAILED, ds);
		} else {
			be16 = bpf_htons(udp_len);
			if (bpf_skb_store_bytes(skb, l3 + 4, &be16, 2, 0))
				return drop(EG_ADJUST_FAILED, ds);
		}
		be16 = bpf_htons(udp_len);
		__builtin_memcpy(udph + 4, &be16, 2);
	}

	if (clone) {
		/* L2/L3/L4 addresses of the subscriber (invariant 3: only from its state). */
		__builtin_memcpy(udph + 0, &(__u16){bpf_htons(conn->sport)}, 2);
		__builtin_memcpy(udph + 2, &(__u16){bpf_htons(conn->dport)}, 2);
		/* eth_dst then eth_src, adjacent as in the Ethernet header (IEEE 802.3) */
		if (bpf_skb_store_bytes(skb, 0, conn->eth_dst, 12, 0))
			return drop(EG_ADJUST_FAILED, ds);
		if (r->ip_version == 4) {
			if (bpf_skb_store_bytes(skb, l3 + 12, conn->src_ip, 4, 0) ||
			    bpf_skb_store_bytes(skb, l3 + 16, conn->dst_ip, 4, 0))
				return drop(EG_ADJUST_FAILED, ds);
		} else {
			if (bpf_skb_store_bytes(skb, l3 + 8, conn->src_ip, 16, 0) ||
			    bpf_skb_store_bytes(skb, l3 + 24, conn->dst_ip, 16, 0))
				return drop(EG_ADJUST_FAILED, ds);
		}
		first &= ~0x20; /* the spin bit belongs to the upstream connection (RFC 9000 17.4) */
	}
	if (r->ip_version == 4 && (delta || clone) && ipv4_csum(skb, l3, hlen))
		return drop(EG_ADJUST_FAILED, ds);

	/* RFC 9000 section 17.3.1: 0 1 S RR K PP; reserved bits 0. The key phase of a copy is the
	 * connection's (set by the controller on every key update); a user-space packet keeps the one
	 * its sender chose, which is always current (RFC 9001 section 6: the NIC seals by this bit). */
	first = 0x40 | (first & 0x20) | ((clone ? conn->key_phase & 1 : (first >> 2) & 1) << 2) | (pn_len - 1);
	udph[8] = first;
	if (clone || delta) {
		if (bpf_skb_store_bytes(skb, l4, udph, 9, 0))
			return drop(EG_ADJUST_FAILED, ds);
	} else if (bpf_skb_store_bytes(skb, l4 + 8, &first, 1, 0)) {
		return drop(EG_ADJUST_FAILED, ds);
	}
	if (dcid_len >= 1 && dcid_len <= QUIC_MAX_CID_LEN &&
	    bpf_skb_store_bytes(skb, l4 + 9, conn->dcid, dcid_len, 0))
		return drop(EG_ADJUST_FAILED, ds);
	be32 = bpf_htonl((__u32)pn << (32 - 8 * pn_len));
	if (bpf_skb_store_bytes(skb, l4 + 9 + dcid_len, &be32, pn_len, 0))
		return drop(EG_ADJUST_FAILED, ds);

	if (clone) {
		__u64 payload = (__u64)r->quic_off + 1 + r->dcid_len + r->pn_len;
		__u64 pad = (__u64)r->frame_off - payload; /* huge when negative */

		if (pad > ZERO_ROOM)
			return drop(EG_UNSUPPORTED, ds);
		if (pad >= 1 && pad <= ZERO_ROOM &&
		    bpf_skb_store_bytes(skb, payload + delta, zero_room, pad, 0))
			return drop(EG_ADJUST_FAILED, ds);
		/* a subgroup stream: its id on the subscriber's connection (same length); a datagram:
		 * the subscriber's track alias (same length) */
		if (stream ? store_varint(skb, r->sid_off + delta, stream->down_stream_id, r->sid_len)
			   : store_varint(skb, r->alias_off + delta, conn->alias, r->alias_len))
			return drop(EG_ADJUST_FAILED, ds);
	}

	/* UDP checksum. A user-space packet of unchanged size may be CHECKSUM_PARTIAL (DESIGN 7):
	 * patch it by the difference of the rewritten 28-byte window (4-byte aligned from the UDP
	 * header) through bpf_l4_csum_replace, which leaves a partial field alone. */
	if (have_window && !bpf_skb_load_bytes(skb, l4 + 8, window_new, sizeof(window_new))) {
		diff = bpf_csum_diff(window, sizeof(window), window_new, sizeof(window_new), 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, l4 + 6, 0, diff,
						    r->ip_version == 4 ? BPF_F_MARK_MANGLED_0 : 0))
			return drop(EG_ADJUST_FAILED, ds);
	} else if (udp_csum_full(skb, l3, l4, r->ip_version == 6, udp_len)) {
		return drop(EG_ADJUST_FAILED, ds);
	}

	now = bpf_ktime_get_ns();
	if (rs) {
		/* RFC 9002 A.5 OnPacketSent. A forwarded datagram copy is the kernel's alone (no record:
		 * aioquic never hears of it); a stream copy stays aioquic's too (registered below, it
		 * retransmits lost stream data), so its ACKs must reach user space: owner "user". */
		recovery_on_sent(rs, pn, skb->len, now, kind == REG_KIND_CLONE ? SENT_OWNER_FORWARDED : SENT_OWNER_USER,
				 stream ? stream->down_stream_id : 0, stream ? r->stream_off : 0,
				 stream ? r->stream_len : 0, stream ? r->stream_fin : 0);
		if (kind == REG_KIND_CLONE)
			goto sent;
	}
	ev = bpf_ringbuf_reserve(&reg_events, sizeof(*ev), 0);
	if (!ev)
		return drop(EG_RING_FULL, ds);
	ev->ts_ns = now;
	ev->pn = pn;
	ev->orig_pn = r->pn_trunc;
	ev->slot = slot;
	ev->size = skb->len;
	ev->kind = kind;
	ev->pn_len = pn_len;
	__builtin_memset(ev->_pad0, 0, sizeof(ev->_pad0));
	ev->stream_id = stream ? stream->down_stream_id : 0;
	ev->stream_off = stream ? r->stream_off : 0;
	ev->stream_len = stream ? r->stream_len : 0;
	ev->stream_fin = stream ? r->stream_fin : 0;
	__builtin_memset(ev->_pad1, 0, sizeof(ev->_pad1));
	bpf_ringbuf_submit(ev, 0);
sent:
	__sync_fetch_and_add(&ds->tx_packets, 1);
	__sync_fetch_and_add(&ds->tx_bytes, skb->len);
	count(stream ? EG_STREAM_SENT : clone ? EG_CLONE_SENT : EG_USER_RENUMBERED);
	return TC_ACT_OK;
}

/* A copy of a subgroup stream's data (RFC 9000 section 19.8) for one subscription: the same bytes at
 * the same offset on the subscriber's stream, which user space opened and mapped (its header and
 * first bytes went from user space). No mapping, data below the mapping's start, or data beyond
 * the subscriber's flow-control credit (RFC 9000 section 4.1): dropped here, and user space, which
 * writes every byte into its own copy of the stream, sends that data itself. */
static __always_inline int handle_stream_copy(struct __sk_buff *skb, const struct parse_result *r,
					      __u32 slot)
{
	struct slot_stream_key key = {.slot = slot, .up_stream_id = r->stream_id};
	struct downstream_conn *conn;
	struct downstream_state *ds;
	struct slot_stream *st;

	conn = bpf_map_lookup_elem(&downstream_conns, &slot);
	if (!conn)
		return drop(EG_NO_SUBSCRIBER, NULL);
	ds = bpf_map_lookup_elem(&downstream_state, &conn->conn_index);
	if (!ds)
		return drop(EG_NO_SUBSCRIBER, NULL);
	if (!conn->enabled)
		return drop(EG_DISABLED, ds);
	st = bpf_map_lookup_elem(&slot_streams, &key);
	if (!st || st->id_len != r->sid_len || r->stream_off < st->min_offset)
		return drop(EG_NO_STREAM, ds);
	if (r->stream_off + r->stream_len > st->max_offset)
		return drop(EG_FLOW_BLOCKED, ds);
	return rewrite(skb, r, conn, ds, slot, 1, st);
}

/* Kernel recovery's drop policy (prio_auto): the connection's own window, NewReno on the subscriber's
 * ACKs (recovery.h), with the hysteresis of relay/drop_policy.py: congested once bytes in flight stay
 * at or above high % of cwnd for congestion_hold_ms (a subscriber's late ACK after a scheduling hiccup
 * is not a congested path: the user-space policy sampled every 20 ms), until they fall below low %.
 * Plain stores: a race between CPUs only delays a flip. */
static __always_inline int auto_congested(const struct downstream_conn *conn)
{
	struct recovery_state *rs;
	__u64 in_flight, window, now;

	if (!conn->prio_auto || !conn->recovery)
		return 0;
	rs = bpf_map_lookup_elem(&recovery_state, &conn->conn_index);
	if (!rs)
		return 0;
	in_flight = rs->bytes_in_flight * 100;
	window = rs->cwnd;
	if (rs->congested) {
		if (in_flight < window * egress_cfg.congestion_low_pct)
			rs->congested = 0;
	} else if (window && in_flight >= window * egress_cfg.congestion_high_pct) {
		now = bpf_ktime_get_ns();
		if (!rs->over_since_ns) {
			rs->over_since_ns = now;
		} else if (now - rs->over_since_ns >= (__u64)egress_cfg.congestion_hold_ms * 1000000) {
			rs->congested = 1;
			rs->congestion_onsets += 1;
			rs->over_since_ns = 0;
		}
	} else {
		rs->over_since_ns = 0;
	}
	return rs->congested;
}

static __always_inline int handle_clone(struct __sk_buff *skb, __u32 mark)
{
	struct parse_result r = {};
	struct cid_key ck = {};
	struct cursor c;
	struct downstream_conn *conn;
	struct downstream_state *ds;
	struct slot_state *ss;
	__u32 slot = mark & 0xffff, dcid_len = (mark >> 16) & 0xff;
	int verdict;

	skb->mark = 0; /* internal to the fast path: never leaves with the copy */
	if (parse_l2_l4(skb, &c, &r) < 0 || dcid_len > QUIC_MAX_CID_LEN ||
	    parse_quic_short(&c, dcid_len, &ck, &r) != ST_ELIGIBLE ||
	    walk_to_payload(&c, &r, 1) != ST_ELIGIBLE)
		return drop(EG_MALFORMED, NULL);
	if (is_stream_frame(&r))
		return handle_stream_copy(skb, &r, slot);
	if (parse_moq_object_datagram(&c, &r) != ST_ELIGIBLE)
		return drop(EG_MALFORMED, NULL);
	conn = bpf_map_lookup_elem(&downstream_conns, &slot);
	if (!conn)
		return drop(EG_NO_SUBSCRIBER, NULL);
	ds = bpf_map_lookup_elem(&downstream_state, &conn->conn_index);
	if (!ds)
		return drop(EG_NO_SUBSCRIBER, NULL);
	if (!conn->enabled)
		return drop(EG_DISABLED, ds);
	ss = bpf_map_lookup_elem(&slot_state, &slot);
	if (!ss)
		return drop(EG_NO_SUBSCRIBER, ds);
	/* The rest of a group whose earlier object was dropped cannot be decoded (docs/fastpath.md,
	 * drop policy): drop it too, until the next group starts. */
	if (conn->drop_group_rest && ss->drop_group == r.group + 1) {
		ss->group_drops += 1;
		return drop(EG_GROUP_DROP, ds);
	}
	/* MoQT draft-14: lower Publisher Priority values are more important. */
	if ((conn->prio_set || auto_congested(conn)) && r.priority > conn->priority_threshold) {
		ss->drop_group = r.group + 1;
		ss->priority_drops += 1;
		return drop(EG_PRIORITY_DROP, ds);
	}
	if (conn->alias_len != r.alias_len)
		return drop(EG_ALIAS_LEN, ds);
	verdict = rewrite(skb, &r, conn, ds, slot, 1, NULL);
	if (verdict == TC_ACT_OK)
		ss->sent += 1;
	return verdict;
}

static __always_inline int handle_user(struct __sk_buff *skb)
{
	struct parse_result r = {};
	struct cid_key ck = {};
	struct cursor c, c2;
	struct downstream_cid *dc = NULL;
	struct downstream_conn *conn;
	struct downstream_state *ds;
	int sport = parse_l2_l4(skb, &c, &r);
	__u32 slot;

	if (sport < 0 || !relay_port(sport))
		return NOT_OURS;
#pragma unroll
	for (int i = 0; i < EGRESS_MAX_DCID_LENS; i++) {
		if (egress_cfg.dcid_len[i] > QUIC_MAX_CID_LEN)
			break;
		c2 = c;
		if (parse_quic_short(&c2, egress_cfg.dcid_len[i], &ck, &r) != ST_ELIGIBLE)
			continue;
		dc = bpf_map_lookup_elem(&downstream_cids, &ck);
		if (dc)
			break;
	}
	if (!dc)
		return NOT_OURS;
	slot = dc->slot;
	conn = bpf_map_lookup_elem(&downstream_conns, &slot);
	if (!conn)
		return NOT_OURS;
	ds = bpf_map_lookup_elem(&downstream_state, &conn->conn_index);
	if (!ds || !conn->enabled || conn->dcid_len != r.dcid_len)
		return NOT_OURS;
	return rewrite(skb, &r, conn, ds, slot, 0, NULL);
}

SEC("tc")
int client_egress(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	int verdict;

	if ((mark & FASTPATH_MARK_MASK) == FASTPATH_MARK_MAGIC)
		return handle_clone(skb, mark);
	verdict = handle_user(skb);
	if (verdict == NOT_OURS) {
		count(EG_PASS);
		return TC_ACT_OK;
	}
	return verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
