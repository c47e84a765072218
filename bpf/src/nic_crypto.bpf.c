/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The sim NIC's kernel-only crypto engine: QUIC 1-RTT ChaCha20-Poly1305 packet protection (RFC 9001 section 5,
 * RFC 8439) as two TC programs on the NIC namespace's veths, behaving like crypto_offload/engine.py:
 *
 *   ncr_wire_rx (wire-facing veth, ingress): short header of a keyed DCID -> remove HP (RFC 9001 5.4), expand
 *       the PN (RFC 9000 A.3), open + verify the tag (RFC 8439 2.8), write header + plaintext, zero the tag room
 *       (the host's "NIC-verified" signal, DESIGN.md 5), fix the UDP checksum, redirect to the host-facing veth.
 *       Unverified: unchanged (policy PASS_UP) or dropped (policy DROP); last 16 bytes zero -> dropped (forgery).
 *   ncr_host_tx (host-facing veth, ingress): short header of a keyed DCID with 16 zero bytes of tag room ->
 *       seal with the key of the host's key-phase bit, apply HP, fix the checksum, redirect to the wire.
 *       No key -> dropped (invariant 7: plaintext never reaches the wire).
 *
 * Every other frame (ARP/ND, long headers, non-QUIC) is redirected unchanged: the NIC is a bump in the wire.
 * Keys come from user space (crypto_offload/tc_engine.py) through ncr_flows; both phases live in one entry, a
 * rekey fills the other slot. A 1-RTT packet coalesced after long-header packets is not handled (passes).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "chacha20.h"
#include "poly1305.h"
#include "structs.h"

#define NCR_DATA_MAX (CHACHA20_MAX_BLOCKS * CHACHA20_BLOCK_SIZE) /* 2048 */
#define NCR_LEN_MAX (NCR_DATA_MAX - CHACHA20_BLOCK_SIZE)	 /* largest UDP payload handled: 1984 */
#define NCR_AAD_MAX 64
#define NCR_TAG 16
#define NCR_CSUM_CHUNK 512 /* bpf_csum_diff works on at most 512 bytes per call */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NCR_MAX_FLOWS);
	__type(key, struct ncr_flow_key);
	__type(value, struct ncr_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ncr_flows SEC(".maps");

/* Index NCR_DIR_RX: ncr_wire_rx, NCR_DIR_TX: ncr_host_tx. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ncr_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ncr_config SEC(".maps");

/* Port counters (enum ncr_counter), per CPU; the flows' own counters are in ncr_flow. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NCR_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ncr_port_stats SEC(".maps");

/* Where the UDP payload is; -1 when the frame is not UDP over IPv4/IPv6 (without extension headers). */
struct ncr_where {
	__u64 q;	  /* UDP payload offset */
	__u64 len;	  /* UDP payload length */
	__u64 csum_off;	  /* UDP checksum offset */
	__u64 csum_flags; /* BPF_F_MARK_MANGLED_0 for IPv4 (0 means "no checksum", RFC 768) */
	__u64 odd;	  /* the QUIC packet starts at an odd offset of the UDP payload (after coalesced ones) */
};

/* Per-CPU scratch: a packet and the cipher states do not fit the 512-byte stack. */
struct ncr_scratch {
	struct chacha20_key ck; /* payload key and nonce */
	struct chacha20_key hk; /* header-protection key */
	__u32 _pad0[2];
	struct poly1305_state ps;
	__u32 ks[16];
	__u32 tag[4];
	__u32 got[4];
	__u32 sample[4];
	__u8 mask[8];
	__u64 pn_off;	  /* per-packet arguments and results of rx_open / tx_seal (BPF calls take 5 args) */
	__u64 hdr_len;
	__s64 pn;
	__u64 phase;
	struct ncr_where w;
	__u8 aad[NCR_AAD_MAX];	  /* the header, zero-padded (RFC 8439 2.8 pad16) */
	__u8 data[NCR_DATA_MAX];  /* the payload */
	__u8 pkt[NCR_DATA_MAX];	  /* the whole UDP payload, for the checksum */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ncr_scratch);
} ncr_scratch SEC(".maps");

static __always_inline void count(struct ncr_flow *f, __u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&ncr_port_stats, &c);

	if (v)
		*v += 1;
	if (f && c < NCR_C_MAX)
		__sync_fetch_and_add(&f->counters[c], 1);
}

static __always_inline int forward(struct ncr_config *cfg)
{
	return cfg->peer_ifindex ? bpf_redirect(cfg->peer_ifindex, 0) : TC_ACT_OK;
}

/* Zero data[len .. roundup16(len)): RFC 8439 2.8 pad16 (and the rest of a block XORed whole). */
static __always_inline void pad16(__u8 *data, __u64 len)
{
	__u64 padlen = (16 - (len & 15)) & 15;
	int i;

	for (i = 0; i < 15; i++) {
		if (i >= padlen)
			break;
		data[(len + i) & (NCR_DATA_MAX - 1)] = 0;
	}
}

/* RFC 8439 2.8: tag over aad || pad16 || ct || pad16 || le64(aad_len) || le64(ct_len). */
static __always_inline void aead_tag(struct ncr_scratch *sc, __u64 aad_len, __u64 len)
{
	__u64 nb_aad, nb_data;

	chacha20_block(&sc->ck, 0, sc->ks); /* RFC 8439 2.6: one-time Poly1305 key from block 0 */
	poly1305_init(&sc->ps, sc->ks);
	/* Block counts as clean 64-bit values: clang otherwise folds the /16 into arithmetic that leaves garbage
	 * above bit 31 of the (u32) argument, and the kernel's inlined bpf_loop compares all 64 bits against
	 * BPF_MAX_LOOPS -> -E2BIG, zero iterations, a wrong tag. */
	nb_aad = (aad_len + 15) / 16;
	nb_data = (len + 15) / 16;
	asm volatile("" : "+r"(nb_aad), "+r"(nb_data));
	poly1305_blocks(&sc->ps, sc->aad, nb_aad & (POLY1305_MAX_BLOCKS - 1));
	poly1305_blocks(&sc->ps, sc->data, nb_data & (POLY1305_MAX_BLOCKS - 1));
	sc->ks[0] = aad_len;
	sc->ks[1] = 0;
	sc->ks[2] = len;
	sc->ks[3] = 0;
	poly1305_block(&sc->ps, sc->ks, POLY1305_HIBIT);
	poly1305_finish(&sc->ps, sc->tag);
}

/* RFC 9000 A.3: expand a truncated packet number around largest + 1. */
static __always_inline __s64 decode_pn(__u64 truncated, __u32 pn_nbits, __s64 largest)
{
	__s64 expected = largest + 1, win = 1LL << pn_nbits, hwin = win / 2, mask = win - 1;
	__s64 candidate = (expected & ~mask) | (__s64)truncated;

	if (candidate <= expected - hwin && candidate < (1LL << 62) - win)
		return candidate + win;
	if (candidate > expected + hwin && candidate >= win)
		return candidate - win;
	return candidate;
}

/* RFC 9001 5.3: key and nonce = IV xor the packet number (big endian, left-padded to 12 bytes). */
static __always_inline void set_key(struct ncr_scratch *sc, struct ncr_flow *f, __u32 phase, __u64 pn)
{
	int i;

	phase &= 1;
#pragma unroll
	for (i = 0; i < CHACHA20_KEY_WORDS; i++)
		sc->ck.key[i] = f->key[phase][i];
	sc->ck.nonce[0] = f->iv[phase][0];
	sc->ck.nonce[1] = f->iv[phase][1] ^ __builtin_bswap32((__u32)(pn >> 32));
	sc->ck.nonce[2] = f->iv[phase][2] ^ __builtin_bswap32((__u32)pn);
}

static __always_inline void set_hp_key(struct ncr_scratch *sc, struct ncr_flow *f)
{
	int i;

#pragma unroll
	for (i = 0; i < CHACHA20_KEY_WORDS; i++)
		sc->hk.key[i] = f->hp_key[i];
}

/* One's-complement sum (RFC 1071) of the UDP payload [off, off + len) as it is now in the skb, folded to 16
 * bits in memory order. The payload starts at an even offset of the UDP header, so the sum is positional. */
static __noinline __u32 payload_sum(struct __sk_buff *skb, struct ncr_scratch *sc, __u64 off, __u64 len)
{
	__u64 rem, chunk;
	__s64 s = 0;
	int i;

	if (len > NCR_LEN_MAX || len < 1)
		return 0;
	*(__u32 *)(sc->pkt + ((len & ~3ULL) & (NCR_DATA_MAX - 4))) = 0; /* zero pad to a multiple of 4 */
	if (bpf_skb_load_bytes(skb, off, sc->pkt, len))
		return 0;
	rem = (len + 3) & ~3ULL;
	for (i = 0; i < NCR_DATA_MAX / NCR_CSUM_CHUNK; i++) {
		if (rem == 0)
			break;
		chunk = rem > NCR_CSUM_CHUNK ? NCR_CSUM_CHUNK : rem;
		s = bpf_csum_diff(NULL, 0, (__be32 *)(sc->pkt + i * NCR_CSUM_CHUNK), chunk & 0x3fc, (__u32)s);
		if (s < 0)
			return 0;
		rem -= chunk;
	}
	s = (s & 0xffff) + ((__u64)s >> 16);
	s = (s & 0xffff) + ((__u64)s >> 16);
	s = (s & 0xffff) + ((__u64)s >> 16);
	return (__u32)s;
}

static __noinline int parse(struct __sk_buff *skb, struct ncr_where *w)
{
	struct ethhdr eth;
	struct udphdr udp;
	__u64 l4;
	__u16 ulen;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return -1;
	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, sizeof(eth), &ip, sizeof(ip)) || ip.protocol != IPPROTO_UDP ||
		    ip.ihl < 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		l4 = sizeof(eth) + ip.ihl * 4;
		w->csum_flags = BPF_F_MARK_MANGLED_0;
	} else if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, sizeof(eth), &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_UDP)
			return -1;
		l4 = sizeof(eth) + sizeof(ip6);
		w->csum_flags = 0;
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)))
		return -1;
	ulen = bpf_ntohs(udp.len);
	if (ulen <= sizeof(udp) || l4 + ulen > skb->len)
		return -1;
	w->q = l4 + sizeof(udp);
	w->odd = 0;
	w->len = ulen - sizeof(udp);
	w->csum_off = l4 + __builtin_offsetof(struct udphdr, check);
	return 0;
}

/* RFC 9000 16: a variable-length integer at `off`; its length in *n. -1 when it does not fit the datagram. */
static __always_inline __s64 read_varint(struct __sk_buff *skb, __u64 off, __u64 end, __u64 *n)
{
	__u8 b[8] = {};
	__u64 v = 0, len, i;

	if (off >= end || bpf_skb_load_bytes(skb, off, b, 1))
		return -1;
	len = 1ULL << (b[0] >> 6);
	if (off + len > end || (len > 1 && bpf_skb_load_bytes(skb, off, b, len > 4 ? 8 : (len > 2 ? 4 : 2))))
		return -1;
	v = b[0] & 0x3f;
#pragma unroll
	for (i = 1; i < 8; i++) {
		if (i < len)
			v = (v << 8) | b[i];
	}
	*n = len;
	return v;
}

#define NCR_MAX_COALESCED 4

/* RFC 9000 12.2: a short-header packet, if any, is the last in a datagram. Walk coalesced QUIC v1 Initial /
 * 0-RTT / Handshake packets by their Length fields (RFC 9000 17.2) like engine.short_header_offset, and move
 * w->q / w->len onto the short-header packet. 0: found; -1: none (a header we cannot walk ends the search). */
static __noinline int skip_long_headers(struct __sk_buff *skb, struct ncr_where *w)
{
	__u64 off = 0, end = w->len, p, n = 0, i;
	__u8 b[7];
	__s64 v;
	__u32 version;

	for (i = 0; i < NCR_MAX_COALESCED; i++) {
		if (off >= end || bpf_skb_load_bytes(skb, w->q + off, b, 1))
			return -1;
		if (!(b[0] & 0x80)) {
			if (!(b[0] & 0x40))
				return -1; /* no fixed bit: padding or not QUIC */
			w->q += off;
			w->len -= off;
			w->odd = off & 1;
			return 0;
		}
		if (off + 7 > end || bpf_skb_load_bytes(skb, w->q + off, b, 7))
			return -1;
		version = ((__u32)b[1] << 24) | ((__u32)b[2] << 16) | ((__u32)b[3] << 8) | b[4];
		if (version != 1 || ((b[0] >> 4) & 3) == 3)
			return -1; /* another version, Version Negotiation, Retry */
		p = off + 6 + b[5]; /* SCID length byte */
		if (p >= end || bpf_skb_load_bytes(skb, w->q + p, b + 6, 1))
			return -1;
		p += 1 + b[6];
		if (((b[0] >> 4) & 3) == 0) { /* Initial: Token Length, Token (RFC 9000 17.2.2) */
			v = read_varint(skb, w->q + p, w->q + end, &n);
			if (v < 0)
				return -1;
			p += n + v;
		}
		v = read_varint(skb, w->q + p, w->q + end, &n);
		if (v < 0 || p + n + v > end)
			return -1;
		off = p + n + v;
	}
	return -1;
}

/* The flow of the packet's DCID: short headers carry no CID length (RFC 9000 17.3.1), so try each length
 * installed for this direction (cfg->cid_len_mask), longest first, like engine.py's _Table.lookup. */
static __noinline struct ncr_flow *lookup_flow(struct __sk_buff *skb, struct ncr_config *cfg, __u8 dir,
						    struct ncr_where *w, __u64 *cid_len)
{
	struct ncr_flow_key k;
	struct ncr_flow *f;
	int n;

#pragma unroll
	for (n = QUIC_MAX_CID_LEN; n >= 0; n--) {
		if (!(cfg->cid_len_mask & (1U << n)) || w->len < 1 + n)
			continue;
		__builtin_memset(&k, 0, sizeof(k));
		k.dir = dir;
		k.cid_len = n;
		if (n && bpf_skb_load_bytes(skb, w->q + 1, k.cid, n))
			continue;
		f = bpf_map_lookup_elem(&ncr_flows, &k);
		if (f) {
			*cid_len = n;
			return f;
		}
	}
	return NULL;
}

static __always_inline int last16_zero(struct __sk_buff *skb, struct ncr_scratch *sc, struct ncr_where *w)
{
	if (w->len <= NCR_TAG || bpf_skb_load_bytes(skb, w->q + w->len - NCR_TAG, sc->got, NCR_TAG))
		return 0;
	return !(sc->got[0] | sc->got[1] | sc->got[2] | sc->got[3]);
}

static __always_inline int fix_csum(struct __sk_buff *skb, struct ncr_where *w, __u32 old_sum, __u32 new_sum)
{
	if (old_sum == new_sum)
		return 0;
	if (w->odd) { /* RFC 1071 2(B): a sum over bytes at odd offsets is the byte-swapped one */
		old_sum = ((old_sum & 0xff) << 8) | (old_sum >> 8);
		new_sum = ((new_sum & 0xff) << 8) | (new_sum >> 8);
	}
	return bpf_l4_csum_replace(skb, w->csum_off, old_sum, new_sum, w->csum_flags | 2);
}

enum { NCR_OK = 0, NCR_FAIL = 1, NCR_ERR = 2 };

/* RX: remove HP, expand the PN, open. Writes the packet only when the tag verified. */
static __noinline int rx_open(struct __sk_buff *skb, struct ncr_scratch *sc, struct ncr_flow *f,
			      struct ncr_where *w)
{
	__u64 pn_off = sc->pn_off, pn_len, hdr_len, ct_len, i, truncated = 0, q = w->q, len = w->len;
	__u32 phase;
	__s64 pn;
	__u8 first;

	/* RFC 9001 5.4.2: the sample is 16 bytes from pn_offset + 4; the tag follows at least one PN byte. */
	if (pn_off > QUIC_MAX_CID_LEN + 1 || len > NCR_LEN_MAX || len < pn_off + 4 + NCR_TAG)
		return NCR_FAIL;
#pragma unroll
	for (i = 0; i < NCR_AAD_MAX / 8; i++)
		((__u64 *)sc->aad)[i] = 0;
	if (bpf_skb_load_bytes(skb, q, sc->aad, (pn_off + 4) & 31) ||
	    bpf_skb_load_bytes(skb, q + pn_off + 4, sc->sample, sizeof(sc->sample)))
		return NCR_ERR;
	set_hp_key(sc, f);
	chacha20_hp_mask(&sc->hk, sc->sample, sc->ks, sc->mask);
	first = sc->aad[0] ^ (sc->mask[0] & 0x1f); /* RFC 9001 5.4.1: short header, 5 bits */
	pn_len = (first & 0x03) + 1;
	phase = (first >> 2) & 1;
	if (!f->has_key[phase])
		return NCR_FAIL;
	sc->aad[0] = first;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i < pn_len) {
			sc->aad[(pn_off + i) & (NCR_AAD_MAX - 1)] ^= sc->mask[1 + i];
			truncated = (truncated << 8) | sc->aad[(pn_off + i) & (NCR_AAD_MAX - 1)];
		} else {
			sc->aad[(pn_off + i) & (NCR_AAD_MAX - 1)] = 0; /* not header: keep the AAD padding zero */
		}
	}
	hdr_len = pn_off + pn_len;
	ct_len = len - hdr_len - NCR_TAG;
	pn = decode_pn(truncated, pn_len * 8, f->largest_pn);
	set_key(sc, f, phase, pn);
	if (ct_len > NCR_LEN_MAX || (ct_len && bpf_skb_load_bytes(skb, q + hdr_len, sc->data, ct_len)))
		return NCR_ERR;
	if (bpf_skb_load_bytes(skb, q + hdr_len + ct_len, sc->got, NCR_TAG))
		return NCR_ERR;
	pad16(sc->data, ct_len);
	aead_tag(sc, hdr_len, ct_len);
	if (poly1305_tag_differs(sc->tag, sc->got))
		return NCR_FAIL; /* nothing decrypted under a forged tag */
	chacha20_xor(&sc->ck, 1, sc->data, ct_len);
#pragma unroll
	for (i = 0; i < 4; i++)
		sc->got[i] = 0;
	if (hdr_len > 25 || ct_len > NCR_LEN_MAX)
		return NCR_ERR;
	if (bpf_skb_store_bytes(skb, q, sc->aad, hdr_len, 0) ||
	    (ct_len && bpf_skb_store_bytes(skb, q + hdr_len, sc->data, ct_len, 0)) ||
	    bpf_skb_store_bytes(skb, q + hdr_len + ct_len, sc->got, NCR_TAG, 0))
		return NCR_ERR;
	sc->pn = pn;
	sc->phase = phase;
	return NCR_OK;
}

SEC("tc")
int ncr_wire_rx(struct __sk_buff *skb)
{
	__u32 zero = 0, key = NCR_DIR_RX, phase = 0, old_sum, new_sum;
	struct ncr_scratch *sc = bpf_map_lookup_elem(&ncr_scratch, &zero);
	struct ncr_config *cfg = bpf_map_lookup_elem(&ncr_config, &key);
	struct ncr_where *wp;
	struct ncr_flow *f;
	__u64 cid_len = 0;
	__s64 pn = 0;
	__u8 first;
	int zero_tag, err;

	if (!sc || !cfg)
		return TC_ACT_SHOT;
	wp = &sc->w;
	if (parse(skb, wp) || bpf_skb_load_bytes(skb, wp->q, &first, 1))
		return forward(cfg);
	if (((first & 0x80) && skip_long_headers(skb, wp)) || (!(first & 0x80) && !(first & 0x40))) {
		count(NULL, NCR_C_LONG_HEADER_PASSES); /* no 1-RTT packet (RFC 9000 12.2, 17.2, 17.3.1) */
		return forward(cfg);
	}
	zero_tag = last16_zero(skb, sc, wp);
	f = lookup_flow(skb, cfg, NCR_DIR_RX, wp, &cid_len);
	if (!f) {
		if (zero_tag) {
			count(NULL, NCR_C_ZERO_TAG_FORGERY_DROPS);
			return TC_ACT_SHOT;
		}
		count(NULL, NCR_C_NO_KEY_PASSES);
		return forward(cfg);
	}
	old_sum = payload_sum(skb, sc, wp->q, wp->len);
	sc->pn_off = 1 + cid_len;
	err = rx_open(skb, sc, f, wp);
	pn = sc->pn;
	phase = sc->phase & 1;
	if (err == NCR_ERR)
		return TC_ACT_SHOT; /* the packet may be half written */
	if (err) {
		count(f, NCR_C_AUTH_FAILURES);
		if (zero_tag) {
			count(f, NCR_C_ZERO_TAG_FORGERY_DROPS);
			return TC_ACT_SHOT;
		}
		return f->drop_on_failure ? TC_ACT_SHOT : forward(cfg);
	}
	new_sum = payload_sum(skb, sc, wp->q, wp->len);
	if (fix_csum(skb, wp, old_sum, new_sum))
		return TC_ACT_SHOT;
	/* RFC 9001 6.3: a newer packet in the other phase means the peer updated its keys. */
	if (phase != f->current_phase && pn > f->largest_pn) {
		f->current_phase = phase;
		count(f, NCR_C_KEY_PHASE_SWITCHES);
	}
	if (pn > f->largest_pn)
		f->largest_pn = pn;
	count(f, NCR_C_DECRYPTED);
	return forward(cfg);
}

/* TX: seal the payload, then header protection (RFC 9001 5.4.1: the sample is taken from the ciphertext). */
static __noinline int tx_seal(struct __sk_buff *skb, struct ncr_scratch *sc, struct ncr_flow *f,
			      struct ncr_where *w)
{
	__u64 hdr_len = sc->hdr_len, pn_off = sc->pn_off, phase = sc->phase & 1;
	__s64 pn = sc->pn;
	__u64 pn_len = hdr_len - pn_off, q = w->q, ct_len = w->len - hdr_len - NCR_TAG, i;

	if (hdr_len < 2 || hdr_len > 25 || pn_len < 1 || pn_len > 4 || ct_len > NCR_LEN_MAX || w->len > NCR_LEN_MAX)
		return NCR_ERR;
#pragma unroll
	for (i = 0; i < NCR_AAD_MAX / 8; i++)
		((__u64 *)sc->aad)[i] = 0;
	if (bpf_skb_load_bytes(skb, q, sc->aad, hdr_len) ||
	    (ct_len && bpf_skb_load_bytes(skb, q + hdr_len, sc->data, ct_len)))
		return NCR_ERR;
	set_key(sc, f, phase, pn);
	chacha20_xor(&sc->ck, 1, sc->data, ct_len); /* RFC 8439 2.8: the payload starts at counter 1 */
	pad16(sc->data, ct_len);
	aead_tag(sc, hdr_len, ct_len);
	if (ct_len > NCR_LEN_MAX)
		return NCR_ERR;
	if ((ct_len && bpf_skb_store_bytes(skb, q + hdr_len, sc->data, ct_len, 0)) ||
	    bpf_skb_store_bytes(skb, q + hdr_len + ct_len, sc->tag, NCR_TAG, 0) ||
	    bpf_skb_load_bytes(skb, q + pn_off + 4, sc->sample, sizeof(sc->sample)))
		return NCR_ERR;
	set_hp_key(sc, f);
	chacha20_hp_mask(&sc->hk, sc->sample, sc->ks, sc->mask);
	sc->aad[0] ^= sc->mask[0] & 0x1f;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i < pn_len)
			sc->aad[(pn_off + i) & (NCR_AAD_MAX - 1)] ^= sc->mask[1 + i];
	}
	if (hdr_len < 2 || hdr_len > 25 || bpf_skb_store_bytes(skb, q, sc->aad, hdr_len, 0))
		return NCR_ERR;
	return NCR_OK;
}

SEC("tc")
int ncr_host_tx(struct __sk_buff *skb)
{
	__u32 zero = 0, key = NCR_DIR_TX, phase, old_sum, new_sum;
	struct ncr_scratch *sc = bpf_map_lookup_elem(&ncr_scratch, &zero);
	struct ncr_config *cfg = bpf_map_lookup_elem(&ncr_config, &key);
	struct ncr_where *wp;
	struct ncr_flow *f;
	__u64 cid_len = 0, pn_off, pn_len, hdr_len, i, truncated = 0;
	__s64 pn;
	__u8 first;

	if (!sc || !cfg)
		return TC_ACT_SHOT;
	wp = &sc->w;
	if (parse(skb, wp) || bpf_skb_load_bytes(skb, wp->q, &first, 1))
		return forward(cfg);
	if (((first & 0x80) && skip_long_headers(skb, wp)) || (!(first & 0x80) && !(first & 0x40))) {
		count(NULL, NCR_C_LONG_HEADER_PASSES); /* no 1-RTT packet (RFC 9000 12.2, 17.2, 17.3.1) */
		return forward(cfg);
	}
	if (bpf_skb_load_bytes(skb, wp->q, &first, 1)) /* the 1-RTT packet's, after coalesced long headers */
		return TC_ACT_SHOT;
	f = lookup_flow(skb, cfg, NCR_DIR_TX, wp, &cid_len);
	if (!f) {
		if (cfg->pass_unkeyed_protected_tx && !last16_zero(skb, sc, wp)) {
			count(NULL, NCR_C_NO_KEY_PASSES);
			return forward(cfg);
		}
		count(NULL, NCR_C_NO_KEY_DROPS);
		return TC_ACT_SHOT;
	}
	pn_off = 1 + cid_len;
	pn_len = (first & 0x03) + 1;
	hdr_len = pn_off + pn_len;
	/* engine.tx: room for the tag and the HP sample (RFC 9001 5.4.2), and 16 zero bytes of tag room. */
	if (wp->len < hdr_len + NCR_TAG || wp->len < pn_off + 4 + NCR_TAG || !last16_zero(skb, sc, wp) ||
	    wp->len > NCR_LEN_MAX) {
		count(f, NCR_C_MALFORMED_DROPS);
		return TC_ACT_SHOT;
	}
	phase = (first >> 2) & 1;
	if (!f->has_key[phase]) {
		count(f, NCR_C_NO_KEY_DROPS);
		return TC_ACT_SHOT;
	}
	if (hdr_len < 2 || hdr_len > 25 || bpf_skb_load_bytes(skb, wp->q, sc->aad, hdr_len))
		return TC_ACT_SHOT;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i < pn_len)
			truncated = (truncated << 8) | sc->aad[(pn_off + i) & (NCR_AAD_MAX - 1)];
	}
	pn = decode_pn(truncated, pn_len * 8, f->largest_pn);
	old_sum = payload_sum(skb, sc, wp->q, wp->len);
	sc->hdr_len = hdr_len;
	sc->pn_off = pn_off;
	sc->pn = pn;
	sc->phase = phase;
	if (tx_seal(skb, sc, f, wp))
		return TC_ACT_SHOT; /* never forward a half-sealed packet */
	new_sum = payload_sum(skb, sc, wp->q, wp->len);
	if (fix_csum(skb, wp, old_sum, new_sum))
		return TC_ACT_SHOT;
	if (phase != f->current_phase) {
		f->current_phase = phase;
		count(f, NCR_C_KEY_PHASE_SWITCHES);
	}
	if (pn > f->largest_pn)
		f->largest_pn = pn;
	count(f, NCR_C_ENCRYPTED);
	return forward(cfg);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
