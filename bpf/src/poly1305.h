/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Poly1305 (RFC 8439 section 2.5) for BPF programs: always inline, no libc, no 128-bit type.
 *
 * Why 26-bit limbs: the accumulator and r are five 26-bit limbs, so each of the 25 limb products is below 2^55
 * and a column of five stays below 2^58 -- plain 64-bit BPF multiplies and adds, no carry tracking. 44-bit
 * limbs would need 88-bit products, i.e. a hand-made 64x64->128 multiply (four multiplies and carry logic
 * per product), which costs more instructions than the three extra limb products it saves.
 *
 * The message lives in a map value. Whole 16-byte blocks go through bpf_loop, so the verifier checks one
 * block once however long the message is. The buffer must have room for POLY1305_MAX_BLOCKS blocks.
 */
#ifndef NIC_POLY1305_H
#define NIC_POLY1305_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define POLY1305_BLOCK_SIZE 16
#define POLY1305_TAG_SIZE 16
#define POLY1305_MAX_BLOCKS 128 /* a power of two: the block index is masked to stay inside the buffer */
#define POLY1305_LIMB 0x3ffffffULL
#define POLY1305_HIBIT (1ULL << 24) /* RFC 8439 2.5.1: the 0x01 byte after a full block, as bit 128 in limb 4 */

struct poly1305_state {
	__u64 r[5];	/* RFC 8439 2.5.1: clamped r, 26-bit limbs */
	__u64 s[5];	/* 5 * r[i]: the reduction 2^130 = 5 (mod p) folded into the multiply */
	__u64 h[5];	/* the accumulator, 26-bit limbs (a limb may exceed 26 bits by a carry) */
	__u32 pad[4];	/* s, the second half of the one-time key, as little-endian words */
};

/* RFC 8439 2.5.1: r = key[0..15] clamped, s = key[16..31]. `key` are the eight little-endian key words. */
static __always_inline void poly1305_init(struct poly1305_state *st, const __u32 key[8])
{
	__u64 t0 = key[0], t1 = key[1], t2 = key[2], t3 = key[3];
	int i;

	/* The clamp (r &= 0x0ffffffc0ffffffc0ffffffc0fffffff) applied limb by limb. */
	st->r[0] = t0 & 0x3ffffff;
	st->r[1] = ((t0 >> 26) | (t1 << 6)) & 0x3ffff03;
	st->r[2] = ((t1 >> 20) | (t2 << 12)) & 0x3ffc0ff;
	st->r[3] = ((t2 >> 14) | (t3 << 18)) & 0x3f03fff;
	st->r[4] = (t3 >> 8) & 0x00fffff;
#pragma unroll
	for (i = 0; i < 5; i++) {
		st->s[i] = st->r[i] * 5;
		st->h[i] = 0;
	}
#pragma unroll
	for (i = 0; i < 4; i++)
		st->pad[i] = key[4 + i];
}

/* RFC 8439 2.5.1: h = (h + block + hibit) * r mod 2^130 - 5 for one 16-byte block (four LE words). */
static __always_inline void poly1305_block(struct poly1305_state *st, const __u32 m[4], __u64 hibit)
{
	__u64 t0 = m[0], t1 = m[1], t2 = m[2], t3 = m[3];
	__u64 h0 = st->h[0], h1 = st->h[1], h2 = st->h[2], h3 = st->h[3], h4 = st->h[4];
	__u64 r0 = st->r[0], r1 = st->r[1], r2 = st->r[2], r3 = st->r[3], r4 = st->r[4];
	__u64 s1 = st->s[1], s2 = st->s[2], s3 = st->s[3], s4 = st->s[4];
	__u64 d0, d1, d2, d3, d4, c;

	h0 += t0 & POLY1305_LIMB;
	h1 += ((t0 >> 26) | (t1 << 6)) & POLY1305_LIMB;
	h2 += ((t1 >> 20) | (t2 << 12)) & POLY1305_LIMB;
	h3 += ((t2 >> 14) | (t3 << 18)) & POLY1305_LIMB;
	h4 += (t3 >> 8) | hibit;

	d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1;
	d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2;
	d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3;
	d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4;
	d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0;

	/* Partial carry propagation: limbs back to ~26 bits, the overflow above 2^130 folded in times 5. */
	c = d0 >> 26; h0 = d0 & POLY1305_LIMB;
	d1 += c; c = d1 >> 26; h1 = d1 & POLY1305_LIMB;
	d2 += c; c = d2 >> 26; h2 = d2 & POLY1305_LIMB;
	d3 += c; c = d3 >> 26; h3 = d3 & POLY1305_LIMB;
	d4 += c; c = d4 >> 26; h4 = d4 & POLY1305_LIMB;
	h0 += c * 5; c = h0 >> 26; h0 &= POLY1305_LIMB;
	h1 += c;

	st->h[0] = h0; st->h[1] = h1; st->h[2] = h2; st->h[3] = h3; st->h[4] = h4;
}

struct poly1305_blocks_ctx {
	struct poly1305_state *st;
	const __u8 *buf; /* map value with room for POLY1305_MAX_BLOCKS blocks, 4-byte aligned */
};

static long poly1305_block_cb(__u32 i, void *data)
{
	struct poly1305_blocks_ctx *c = data;
	const __u32 *m = (const __u32 *)(c->buf + (i & (POLY1305_MAX_BLOCKS - 1)) * POLY1305_BLOCK_SIZE);

	poly1305_block(c->st, m, POLY1305_HIBIT);
	return 0;
}

/* Absorb `nblocks` whole 16-byte blocks of buf (each with the 0x01 byte appended, RFC 8439 2.5.1).
 *
 * The count goes to bpf_loop as a clean 64-bit register: bpf_loop's nr_loops is a u32, so clang 14 passes
 * whatever sits above bit 31 of the register it computed the count in (e.g. from (len + 15) / 16), but the
 * kernel's inlined bpf_loop compares all 64 bits against BPF_MAX_LOOPS and answers -E2BIG with zero
 * iterations -- a wrong tag, silently. Clamping a 64-bit copy and pinning it in a register with an empty asm
 * makes the register hold exactly the clamped value, whatever the caller's expression was. */
static __always_inline void poly1305_blocks(struct poly1305_state *st, const __u8 *buf, __u64 nblocks)
{
	struct poly1305_blocks_ctx c = { .st = st, .buf = buf };
	__u64 n = nblocks;

	if (n > POLY1305_MAX_BLOCKS)
		n = POLY1305_MAX_BLOCKS;
	asm volatile("" : "+r"(n));
	bpf_loop(n, poly1305_block_cb, &c, 0);
}

/* RFC 8439 2.5.1: the last partial block: its bytes, then 0x01, then zeros, and no bit 128. `m` holds the
 * block already laid out that way. */
static __always_inline void poly1305_last_partial(struct poly1305_state *st, const __u32 m[4])
{
	poly1305_block(st, m, 0);
}

/* RFC 8439 2.5.1: fully reduce h mod 2^130 - 5, add s mod 2^128, emit 16 little-endian bytes as 4 words. */
static __always_inline void poly1305_finish(struct poly1305_state *st, __u32 tag[4])
{
	__u64 h0 = st->h[0], h1 = st->h[1], h2 = st->h[2], h3 = st->h[3], h4 = st->h[4];
	__u64 g0, g1, g2, g3, g4, c, mask, f;

	c = h1 >> 26; h1 &= POLY1305_LIMB;
	h2 += c; c = h2 >> 26; h2 &= POLY1305_LIMB;
	h3 += c; c = h3 >> 26; h3 &= POLY1305_LIMB;
	h4 += c; c = h4 >> 26; h4 &= POLY1305_LIMB;
	h0 += c * 5; c = h0 >> 26; h0 &= POLY1305_LIMB;
	h1 += c;

	/* g = h + 5 - 2^130: if it does not go negative, h >= p and g is the reduced value (constant time). */
	g0 = h0 + 5; c = g0 >> 26; g0 &= POLY1305_LIMB;
	g1 = h1 + c; c = g1 >> 26; g1 &= POLY1305_LIMB;
	g2 = h2 + c; c = g2 >> 26; g2 &= POLY1305_LIMB;
	g3 = h3 + c; c = g3 >> 26; g3 &= POLY1305_LIMB;
	g4 = h4 + c - (1ULL << 26);
	mask = (g4 >> 63) - 1; /* all ones when g4 >= 0 */
	h0 = (h0 & ~mask) | (g0 & mask);
	h1 = (h1 & ~mask) | (g1 & mask);
	h2 = (h2 & ~mask) | (g2 & mask);
	h3 = (h3 & ~mask) | (g3 & mask);
	h4 = (h4 & ~mask) | (g4 & mask & POLY1305_LIMB);

	/* h mod 2^128 as four 32-bit words, then + s with carries (RFC 8439 2.5.1 "a += s"). */
	h0 = (h0 | (h1 << 26)) & 0xffffffff;
	h1 = ((h1 >> 6) | (h2 << 20)) & 0xffffffff;
	h2 = ((h2 >> 12) | (h3 << 14)) & 0xffffffff;
	h3 = ((h3 >> 18) | (h4 << 8)) & 0xffffffff;
	f = h0 + st->pad[0]; tag[0] = f;
	f = h1 + st->pad[1] + (f >> 32); tag[1] = f;
	f = h2 + st->pad[2] + (f >> 32); tag[2] = f;
	f = h3 + st->pad[3] + (f >> 32); tag[3] = f;
}

/* Constant-time 16-byte tag comparison: 0 when equal. */
static __always_inline __u32 poly1305_tag_differs(const __u32 a[4], const __u32 b[4])
{
	return (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]);
}

#endif /* NIC_POLY1305_H */
