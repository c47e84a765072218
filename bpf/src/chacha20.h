/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ChaCha20 (RFC 8439 section 2.3 block function, 2.4 encryption) and the QUIC header-protection mask built on
 * it (RFC 9001 section 5.4.4), for BPF programs: always inline, no libc, no 128-bit types.
 *
 * Long buffers go through bpf_loop (kernel 5.17+) so the verifier checks one 64-byte block once instead of
 * walking every block of a 1500-byte packet; the buffer lives in a map value (the 512-byte stack cannot hold
 * a packet) and must have room for CHACHA20_MAX_BLOCKS whole blocks, because the last block is XORed whole
 * (the caller copies back only the bytes it owns).
 */
#ifndef NIC_CHACHA20_H
#define NIC_CHACHA20_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define CHACHA20_BLOCK_SIZE 64
#define CHACHA20_MAX_BLOCKS 32 /* a power of two: the block index is masked to stay inside the buffer */
#define CHACHA20_KEY_WORDS 8   /* RFC 8439 2.3: 256-bit key as eight little-endian words */
#define CHACHA20_NONCE_WORDS 3 /* RFC 8439 2.3: 96-bit nonce as three little-endian words */

/* A key and nonce as the little-endian words of the RFC 8439 2.3 state (BPF is little endian on x86/arm64,
 * so a byte copy of the wire key is already in this form). */
struct chacha20_key {
	__u32 key[CHACHA20_KEY_WORDS];
	__u32 nonce[CHACHA20_NONCE_WORDS];
};

#define CHACHA20_ROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))

/* RFC 8439 2.1: the quarter round on four state words. */
#define CHACHA20_QR(a, b, c, d)                                \
	do {                                                   \
		a += b; d ^= a; d = CHACHA20_ROTL(d, 16);      \
		c += d; b ^= c; b = CHACHA20_ROTL(b, 12);      \
		a += b; d ^= a; d = CHACHA20_ROTL(d, 8);       \
		c += d; b ^= c; b = CHACHA20_ROTL(b, 7);       \
	} while (0)

/* RFC 8439 2.3: one 64-byte keystream block as 16 little-endian words in out[]. A BPF-to-BPF call, not
 * inlined: the 16 state words spill (BPF has 10 registers), and one shared frame for those spills keeps every
 * caller's stack (max 512 bytes over the whole call chain) small, and the program a single copy of the rounds. */
static __noinline __attribute__((unused)) void chacha20_block(const struct chacha20_key *k, __u32 counter, __u32 out[16])
{
	/* RFC 8439 2.3: "expand 32-byte k" constants, key, block counter, nonce. */
	__u32 x0 = 0x61707865, x1 = 0x3320646e, x2 = 0x79622d32, x3 = 0x6b206574;
	__u32 x4 = k->key[0], x5 = k->key[1], x6 = k->key[2], x7 = k->key[3];
	__u32 x8 = k->key[4], x9 = k->key[5], x10 = k->key[6], x11 = k->key[7];
	__u32 x12 = counter, x13 = k->nonce[0], x14 = k->nonce[1], x15 = k->nonce[2];
	int i;

	/* RFC 8439 2.3: 20 rounds = 10 x (column round, diagonal round). */
	for (i = 0; i < 10; i++) {
		CHACHA20_QR(x0, x4, x8, x12);
		CHACHA20_QR(x1, x5, x9, x13);
		CHACHA20_QR(x2, x6, x10, x14);
		CHACHA20_QR(x3, x7, x11, x15);
		CHACHA20_QR(x0, x5, x10, x15);
		CHACHA20_QR(x1, x6, x11, x12);
		CHACHA20_QR(x2, x7, x8, x13);
		CHACHA20_QR(x3, x4, x9, x14);
	}
	/* RFC 8439 2.3: add the input state back. */
	out[0] = x0 + 0x61707865; out[1] = x1 + 0x3320646e; out[2] = x2 + 0x79622d32; out[3] = x3 + 0x6b206574;
	out[4] = x4 + k->key[0]; out[5] = x5 + k->key[1]; out[6] = x6 + k->key[2]; out[7] = x7 + k->key[3];
	out[8] = x8 + k->key[4]; out[9] = x9 + k->key[5]; out[10] = x10 + k->key[6]; out[11] = x11 + k->key[7];
	out[12] = x12 + counter; out[13] = x13 + k->nonce[0]; out[14] = x14 + k->nonce[1];
	out[15] = x15 + k->nonce[2];
}

/* State of one chacha20_xor run, shared with the bpf_loop callback through the caller's stack. */
struct chacha20_xor_ctx {
	const struct chacha20_key *k;
	__u8 *buf; /* map value with room for CHACHA20_MAX_BLOCKS blocks, 4-byte aligned */
	__u32 counter;
};

static long chacha20_xor_block_cb(__u32 i, void *data)
{
	struct chacha20_xor_ctx *c = data;
	__u32 ks[16];
	__u32 *p;
	int j;

	chacha20_block(c->k, c->counter + i, ks);
	/* RFC 8439 2.4: block i encrypts bytes [64 i, 64 i + 64) with counter + i. */
	p = (__u32 *)(c->buf + (i & (CHACHA20_MAX_BLOCKS - 1)) * CHACHA20_BLOCK_SIZE);
#pragma unroll
	for (j = 0; j < 16; j++)
		p[j] ^= ks[j];
	return 0;
}

/* RFC 8439 2.4: XOR the keystream from `counter` on over ceil(len / 64) whole blocks of buf. */
static __always_inline void chacha20_xor(const struct chacha20_key *k, __u32 counter, __u8 *buf, __u32 len)
{
	struct chacha20_xor_ctx c = { .k = k, .buf = buf, .counter = counter };
	__u32 nblocks = (len + CHACHA20_BLOCK_SIZE - 1) / CHACHA20_BLOCK_SIZE;

	if (nblocks > CHACHA20_MAX_BLOCKS)
		nblocks = CHACHA20_MAX_BLOCKS;
	bpf_loop(nblocks, chacha20_xor_block_cb, &c, 0);
}

/* RFC 9001 5.4.4: counter = sample[0..3] (little endian), nonce = sample[4..15]; the mask is the first five
 * bytes of ChaCha20 over zeros, i.e. of the keystream block. `hp` holds the HP key (its nonce is overwritten);
 * `hp` and `ks` may live in a map value, to keep them off the caller's stack. */
static __always_inline void chacha20_hp_mask(struct chacha20_key *hp, const __u32 sample[4], __u32 ks[16],
					     __u8 mask[5])
{
	hp->nonce[0] = sample[1];
	hp->nonce[1] = sample[2];
	hp->nonce[2] = sample[3];
	chacha20_block(hp, sample[0], ks);
	mask[0] = ks[0];
	mask[1] = ks[0] >> 8;
	mask[2] = ks[0] >> 16;
	mask[3] = ks[0] >> 24;
	mask[4] = ks[1];
}

#endif /* NIC_CHACHA20_H */
