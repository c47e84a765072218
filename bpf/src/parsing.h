/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cursor-style packet parsing shared by the TC programs (the xdp-tools parsing_helpers.h move).
 *
 * A cursor holds the packet bounds (data, data_end), the offset of the next unread byte and a
 * logical limit `lim` (end of the current header's payload: IP total length, UDP length, QUIC
 * payload before the tag room, a DATAGRAM frame). Every parse_* helper checks both the logical
 * limit and the physical packet end, advances the cursor only on success, and returns < 0 on
 * failure. Offsets are clamped to PARSE_MAX_OFF before they touch a pointer, which keeps every
 * packet access provably in bounds and lets the verifier merge states in the bounded loops.
 */
#ifndef MOQ_BPF_PARSING_H
#define MOQ_BPF_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "structs.h"

/* Largest offset the parsers look at: beyond any MTU we serve (9000-byte jumbo frames included). */
#define PARSE_MAX_OFF 0x3fff /* keep in sync with the mask in cursor_widen */
/* QUIC payload protection (RFC 9001 section 5.3): every AEAD we use has a 16-byte tag. */
#define QUIC_TAG_LEN 16
/* Bounded walks (invariant 5: real bounds everywhere). More goes to the slow path, counted. */
#define MAX_FRAMES 16        /* frames before the DATAGRAM frame (each PADDING byte is one frame) */
#define MAX_ACK_RANGES 16    /* Additional ACK Ranges in one ACK frame (RFC 9000 section 19.3.1) */
#define MAX_VLAN_TAGS 2

/* RFC 9000 section 12.4 / 19: frame types the ingress walk knows. */
#define QUIC_FRAME_PADDING 0x00
#define QUIC_FRAME_PING 0x01
#define QUIC_FRAME_ACK 0x02
#define QUIC_FRAME_ACK_ECN 0x03
/* RFC 9221 section 4: DATAGRAM without (0x30) and with (0x31) a Length field. */
#define QUIC_FRAME_DATAGRAM 0x30
#define QUIC_FRAME_DATAGRAM_LEN 0x31
#define QUIC_FRAME_STREAM 0x08            /* RFC 9000 section 19.8: 0x08-0x0f */
#define QUIC_STREAM_MASK 0xf8
#define QUIC_STREAM_OFF 0x04
#define QUIC_STREAM_LEN 0x02
#define QUIC_STREAM_FIN 0x01

/* MoQT draft-14 section 10.3.1 (OBJECT_DATAGRAM): types 0x00-0x07; bit 2 set = Object ID absent. */
#define MOQT_DATAGRAM_TYPE_MAX 0x07
#define MOQT_DATAGRAM_NO_OBJECT_ID 0x04

/* barrier_var (bpf_helpers.h) stops clang from re-deriving a value the verifier has already
 * bounded (e.g. folding data + (lim - 16) + 16 back into data + lim), which loses the bound. */

struct cursor {
	void *data;       /* skb->data */
	void *data_end;   /* skb->data_end */
	__u64 off;        /* next unread byte, from data (64-bit: no subregister copies that */
	__u64 lim;        /* lose the verifier's bounds); logical end of the region, from data */
};

static __always_inline void cursor_init(struct cursor *c, struct __sk_buff *skb)
{
	c->data = (void *)(long)skb->data;
	c->data_end = (void *)(long)skb->data_end;
	c->off = 0;
	c->lim = PARSE_MAX_OFF;
}

/* Forget everything the verifier knows about the offset except 0 <= off <= PARSE_MAX_OFF. Without
 * this, every path through a loop (PADDING +1, an ACK of any size, ...) reaches the next iteration
 * with a different lower bound and the verifier explores each one separately (quadratic in the
 * number of frames); with it, all of them are the same state and are pruned. The AND is written in
 * asm so that clang cannot drop it as redundant. */
static __always_inline int cursor_widen(struct cursor *c)
{
	__u64 off = c->off;

	if (off > PARSE_MAX_OFF)
		return -1;
	asm volatile("%[off] &= 0x3fff" : [off] "+r"(off));
	c->off = off;
	return 0;
}

/* Pointer to n bytes (a constant) at the cursor, or NULL when they pass lim or the packet end. */
static __always_inline void *cursor_ptr(const struct cursor *c, __u32 n)
{
	__u64 off = c->off;
	void *p;

	if (off > PARSE_MAX_OFF || off + n > c->lim)
		return NULL;
	p = c->data + off;
	if (p + n > c->data_end)
		return NULL;
	return p;
}

/* Like cursor_ptr, then advance past the n bytes. */
static __always_inline void *cursor_take(struct cursor *c, __u32 n)
{
	void *p = cursor_ptr(c, n);

	if (p) {
		c->off += n;
		if (c->off > PARSE_MAX_OFF) /* keeps umax at PARSE_MAX_OFF: lets the verifier prune */
			return NULL;
	}
	return p;
}

/* Advance by a run-time length n (e.g. a varint-coded Length field). */
static __always_inline int cursor_skip(struct cursor *c, __u64 n)
{
	if (c->off > c->lim || n > c->lim - c->off)
		return -1;
	c->off += n;
	return c->off > PARSE_MAX_OFF ? -1 : 0;
}

/* RFC 9000 section 16: variable-length integer, 2-bit length prefix (1, 2, 4 or 8 bytes).
 * Branch-free: reads 8 physical bytes and masks, so the verifier sees one path whatever the
 * length. Callers use it only inside a QUIC payload, where the 16-byte tag room guarantees that
 * 8 bytes are present physically; the logical limit is still checked exactly. */
static __always_inline int parse_varint(struct cursor *c, __u64 *v)
{
	__u64 off = c->off, len, x;
	__u8 *p;

	if (off > PARSE_MAX_OFF)
		return -1;
	p = c->data + off;
	if ((void *)(p + 8) > c->data_end)
		return -1;
	x = bpf_be64_to_cpu(*(__u64 *)p);
	len = 1ULL << (x >> 62);
	if (off + len > c->lim)
		return -1;
	*v = (x >> (64 - 8 * len)) & (~0ULL >> (66 - 8 * len));
	off += len;
	/* Re-clamp after every advance: offsets then always range up to PARSE_MAX_OFF, so the states
	 * the verifier reaches after different encodings nest and are pruned instead of multiplying. */
	if (off > PARSE_MAX_OFF)
		return -1;
	c->off = off;
	return (int)len;
}

/* IEEE 802.3 header, skipping up to MAX_VLAN_TAGS 802.1Q/802.1ad tags. Returns the EtherType
 * (host order) or -1. */
static __always_inline int parse_ethhdr(struct cursor *c)
{
	struct ethhdr *eth = cursor_take(c, sizeof(*eth));
	__u16 proto;

	if (!eth)
		return -1;
	proto = bpf_ntohs(eth->h_proto);
#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		__be16 *tag;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		tag = cursor_take(c, 4); /* TCI (2) + inner EtherType (2) */
		if (!tag)
			return -1;
		proto = bpf_ntohs(tag[1]);
	}
	return proto;
}

/* Result codes of the L3/L4 helpers (negative) besides success (0). */
#define PARSE_ERR_MALFORMED -1  /* truncated or inconsistent */
#define PARSE_ERR_OTHER -2      /* well-formed but not ours (fragment, extension header, other protocol) */

/* RFC 791 section 3.1: IPv4 header with options (IHL), total length bounds lim. UDP only,
 * no fragments (a fragment's UDP payload is incomplete). */
static __always_inline int parse_ipv4(struct cursor *c)
{
	__u64 start = c->off, hlen, tot;
	struct iphdr *ip = cursor_ptr(c, sizeof(*ip));

	if (!ip)
		return PARSE_ERR_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_ERR_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || start + tot > c->lim)
		return PARSE_ERR_MALFORMED;
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF flag or a fragment offset */
		return PARSE_ERR_OTHER;
	if (ip->protocol != IPPROTO_UDP)
		return PARSE_ERR_OTHER;
	c->lim = start + tot;
	return cursor_skip(c, hlen) ? PARSE_ERR_MALFORMED : 0;
}

/* RFC 8200 section 3: fixed IPv6 header, UDP as the next header (extension headers go up). */
static __always_inline int parse_ipv6(struct cursor *c)
{
	__u64 start = c->off, tot;
	struct ipv6hdr *ip6 = cursor_take(c, sizeof(*ip6));

	if (!ip6)
		return PARSE_ERR_MALFORMED;
	if (ip6->version != 6)
		return PARSE_ERR_MALFORMED;
	tot = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (start + tot > c->lim)
		return PARSE_ERR_MALFORMED;
	if (ip6->nexthdr != IPPROTO_UDP)
		return PARSE_ERR_OTHER;
	c->lim = start + tot;
	return 0;
}

/* RFC 768: UDP header; its Length bounds lim. Returns the destination port (host order) or < 0. */
static __always_inline int parse_udphdr(struct cursor *c)
{
	__u64 start = c->off, len;
	struct udphdr *udp = cursor_take(c, sizeof(*udp));

	if (!udp)
		return PARSE_ERR_MALFORMED;
	len = bpf_ntohs(udp->len);
	if (len < sizeof(*udp) || start + len > c->lim)
		return PARSE_ERR_MALFORMED;
	c->lim = start + len;
	return bpf_ntohs(udp->dest);
}

/* DESIGN section 5 / invariant 5: a short-header packet is NIC-verified plaintext only when its
 * last QUIC_TAG_LEN bytes (the AEAD tag room, RFC 9001 section 5.3) are all zero. On success
 * lim is moved to the start of the tag room. Returns 1 (plaintext), 0 (protected), -1 (short). */
static __always_inline int quic_tag_room_zero(struct cursor *c)
{
	__u64 tag_off;
	__u64 *tag;

	if (c->lim < c->off + QUIC_TAG_LEN || c->lim > PARSE_MAX_OFF)
		return -1;
	tag_off = c->lim - QUIC_TAG_LEN;
	barrier_var(tag_off);
	if (tag_off > PARSE_MAX_OFF)
		return -1;
	tag = c->data + tag_off;
	if ((void *)(tag + 2) > c->data_end)
		return -1;
	if (tag[0] | tag[1])
		return 0;
	c->lim = tag_off;
	return 1;
}

/* RFC 9000 section 19.3: skip an ACK frame (type byte already consumed). Returns 0, -1 when
 * malformed, -2 when it has more than MAX_ACK_RANGES ranges. */
static __always_inline int skip_ack_frame(struct cursor *c, __u8 type)
{
	__u64 v, count;

	if (parse_varint(c, &v) < 0 ||      /* Largest Acknowledged */
	    parse_varint(c, &v) < 0 ||      /* ACK Delay */
	    parse_varint(c, &count) < 0 ||  /* ACK Range Count */
	    parse_varint(c, &v) < 0)        /* First ACK Range */
		return -1;
	if (count > MAX_ACK_RANGES)
		return -2;
	for (int i = 0; i < MAX_ACK_RANGES; i++) {
		if (i >= count)
			break;
		if (cursor_widen(c))
			return -1;
		if (parse_varint(c, &v) < 0 ||  /* Gap (section 19.3.1) */
		    parse_varint(c, &v) < 0)    /* ACK Range Length */
			return -1;
	}
	if (type == QUIC_FRAME_ACK_ECN) {   /* section 19.3.2: ECT0, ECT1, ECN-CE counts */
		if (parse_varint(c, &v) < 0 || parse_varint(c, &v) < 0 || parse_varint(c, &v) < 0)
			return -1;
	}
	return 0;
}

/* RFC 9000 section 17.3.1: a short header does not carry its DCID length; the receiver knows it. The
 * relay configures it per UDP port. Returns that length, or -1 when the port is not a relay port. */
static __always_inline int relay_port_dcid_len(const volatile struct ingress_config *cfg, __u32 port)
{
#pragma unroll
	for (int i = 0; i < MAX_RELAY_PORTS; i++) {
		if (cfg->port[i] == 0)
			break;
		if (cfg->port[i] == port)
			return cfg->dcid_len[i];
	}
	return -1;
}

/* RFC 9000 section 17.3.1: 1-RTT (short header) packet. Header Form (0x80) = 0, Fixed Bit
 * (0x40) = 1; then the DCID, whose length the receiver knows (dcid_len, configured per relay
 * port), then the Packet Number of (first byte & 0x03) + 1 bytes. The first byte's low bits and
 * the packet number are under header protection on the wire (RFC 9001 section 5.4); the NIC
 * removed it. Copies the DCID into key. Returns ST_ELIGIBLE to go on, or the stat that stops. */
static __always_inline int parse_quic_short(struct cursor *c, __u32 dcid_len, struct cid_key *key,
					    struct parse_result *r)
{
	__u8 *first = cursor_ptr(c, 1), *cid;
	__u32 pn_len, pn, reserved;
	int tag;

	if (!first)
		return ST_NOT_QUIC;
	if (*first & 0x80)
		return ST_LONG_HEADER;
	if (!(*first & 0x40))
		return ST_NOT_QUIC;
	/* Reserved Bits (0x18) must be 0 once header protection is off (RFC 9000 section 17.3.1);
	 * the QUIC stack, not the fast path, answers a violation. Checked after the tag room below. */
	reserved = *first & 0x18;
	r->quic_off = c->off;
	pn_len = (*first & 0x03) + 1;
	c->off += 1;
	/* Invariant 5: decide protected vs plaintext before reading anything under protection. */
	tag = quic_tag_room_zero(c);
	if (tag < 0)
		return ST_NOT_QUIC;
	if (tag == 0)
		return ST_PROTECTED;
	if (reserved)
		return ST_MALFORMED;
	if (dcid_len > QUIC_MAX_CID_LEN || c->off + dcid_len + pn_len > c->lim)
		return ST_MALFORMED;
	/* The payload is followed by the tag room, so QUIC_MAX_CID_LEN physical bytes can be read
	 * whenever the packet is long enough to hold a short header at all. */
	cid = cursor_ptr(c, 0);
	if (!cid || (void *)(cid + QUIC_MAX_CID_LEN) > c->data_end)
		return ST_MALFORMED;
	key->len = dcid_len;
	/* Branch-free copy of the first dcid_len bytes (zero after them): one verifier path. */
#pragma unroll
	for (__u64 i = 0; i < QUIC_MAX_CID_LEN; i++)
		key->cid[i] = cid[i] & (__u8)(0 - ((i - dcid_len) >> 63)); /* 0xff while i < len */
	c->off += dcid_len;
	/* Packet Number (RFC 9000 section 17.1), 1..4 bytes big endian; branch-free like
	 * parse_varint (the tag room guarantees 4 physical bytes). */
	cid = cursor_ptr(c, 0);
	if (!cid || (void *)(cid + 4) > c->data_end || c->off + pn_len > c->lim)
		return ST_MALFORMED;
	pn = bpf_ntohl(*(__u32 *)cid) >> (32 - 8 * pn_len);
	c->off += pn_len;
	/* Paths with different (configured) DCID lengths merge here for the verifier. */
	if (cursor_widen(c))
		return ST_MALFORMED;
	r->pn_trunc = pn;
	r->pn_len = pn_len;
	r->dcid_len = dcid_len;
	r->payload_end = c->lim;
	return ST_ELIGIBLE;
}

/* RFC 9000 section 19.8: STREAM frame, type 0b00001 OFF LEN FIN | Stream ID | [Offset] | [Length]
 * | Stream Data. It must be the packet's last frame (its data is copied, anything after it would
 * need stripping per copy). */
static __always_inline int parse_stream_frame(struct cursor *c, struct parse_result *r, __u8 type,
					      __u64 frame_off)
{
	__u64 v, off = 0, len;
	int n;

	r->frame_type = type;
	r->frame_off = frame_off;
	r->sid_off = c->off;
	n = parse_varint(c, &v);
	if (n < 0)
		return ST_MALFORMED;
	r->stream_id = v;
	r->sid_len = n;
	if ((type & QUIC_STREAM_OFF) && parse_varint(c, &off) < 0)
		return ST_MALFORMED;
	r->stream_off = off;
	if (c->off > c->lim)
		return ST_MALFORMED;
	if (type & QUIC_STREAM_LEN) {
		if (parse_varint(c, &len) < 0 || len > c->lim - c->off)
			return ST_MALFORMED;
		if (c->off + len != c->lim)
			return ST_TRAILING;
	} else {
		len = c->lim - c->off;
	}
	r->stream_len = len;
	r->stream_fin = type & QUIC_STREAM_FIN;
	return ST_ELIGIBLE;
}

/* RFC 9000 section 19: bounded walk over the frames before the payload frame. Skips PADDING
 * (19.1), PING (19.2) and ACK (19.3); stops at DATAGRAM (RFC 9221 section 4) with c->lim set to
 * the end of its data, or (with streams) at a STREAM frame that ends the packet. Anything else
 * goes to the slow path. `streams` is a constant at every call site (the walk is inlined). */
static __always_inline int walk_to_payload(struct cursor *c, struct parse_result *r, int streams)
{
	for (int i = 0; i < MAX_FRAMES; i++) {
		__u64 frame_off;
		__u8 *t;
		__u64 len;
		int err;

		if (cursor_widen(c))
			return ST_MALFORMED;
		frame_off = c->off;
		t = cursor_take(c, 1);
		if (!t)
			return c->off >= c->lim ? ST_NO_DATAGRAM : ST_MALFORMED;
		switch (*t) {
		case QUIC_FRAME_PADDING:
		case QUIC_FRAME_PING:
			continue;
		case QUIC_FRAME_ACK:
		case QUIC_FRAME_ACK_ECN:
			err = skip_ack_frame(c, *t);
			if (err == -2)
				return ST_TOO_COMPLEX;
			if (err)
				return ST_MALFORMED;
			continue;
		case QUIC_FRAME_DATAGRAM:
			r->frame_type = QUIC_FRAME_DATAGRAM;
			r->frame_off = frame_off;
			return ST_ELIGIBLE;      /* Datagram Data runs to the end of the packet */
		case QUIC_FRAME_DATAGRAM_LEN:
			r->frame_type = QUIC_FRAME_DATAGRAM_LEN;
			r->frame_off = frame_off;
			if (parse_varint(c, &len) < 0 || len > c->lim - c->off)
				return ST_MALFORMED;
			if (c->off + len != c->lim)
				return ST_TRAILING; /* frames after it would need stripping per copy */
			return ST_ELIGIBLE;
		default:
			if (streams && (*t & QUIC_STREAM_MASK) == QUIC_FRAME_STREAM)
				return parse_stream_frame(c, r, *t, frame_off);
			return ST_UNKNOWN_FRAME;
		}
	}
	return ST_TOO_COMPLEX;
}

static __always_inline int walk_to_datagram(struct cursor *c, struct parse_result *r)
{
	return walk_to_payload(c, r, 0);
}

static __always_inline int is_stream_frame(const struct parse_result *r)
{
	return (r->frame_type & QUIC_STREAM_MASK) == QUIC_FRAME_STREAM;
}

/* MoQT draft-14 section 10.3.1, OBJECT_DATAGRAM: Type (varint 0x00-0x07) | Track Alias (varint)
 * | Group ID (varint) | [Object ID (varint), absent when type bit 0x04 is set] | Publisher
 * Priority (8 bits) | [Extensions] | Payload. */
static __always_inline int parse_moq_object_datagram(struct cursor *c, struct parse_result *r)
{
	__u64 type, v;
	__u8 *prio;
	int n;

	r->moq_off = c->off;
	if (parse_varint(c, &type) < 0)
		return ST_MALFORMED;
	if (type > MOQT_DATAGRAM_TYPE_MAX)
		return ST_NOT_OBJECT;
	r->moq_type = type;
	r->alias_off = c->off;
	n = parse_varint(c, &v);
	if (n < 0)
		return ST_MALFORMED;
	r->alias = v;
	r->alias_len = n;
	if (parse_varint(c, &v) < 0)
		return ST_MALFORMED;
	r->group = v;
	v = 0;
	if (!(type & MOQT_DATAGRAM_NO_OBJECT_ID) && parse_varint(c, &v) < 0)
		return ST_MALFORMED;
	r->object = v;
	prio = cursor_take(c, 1);
	if (!prio)
		return ST_MALFORMED;
	r->priority = *prio;
	return ST_ELIGIBLE;
}

#endif /* MOQ_BPF_PARSING_H */
