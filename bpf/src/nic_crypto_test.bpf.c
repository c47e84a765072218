/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test harness for the BPF ChaCha20-Poly1305 code (not part of the relay): run through BPF_PROG_TEST_RUN,
 * it proves chacha20.h and poly1305.h byte-exact against RFC 8439 / RFC 9001 and the user-space reference.
 *
 * Request frame: Ethernet header (EtherType 0x88B5, so the kernel pulls no IP header) || struct nct_cmd ||
 * aad[aad_len] || data[len] || 16 bytes of tag room (ops that make or check a tag). The answer is the same
 * frame with data (and tag / mask / header bytes) rewritten in place; the verdict is an nct_status.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "chacha20.h"
#include "poly1305.h"

#define NCT_AAD_MAX 64
#define NCT_DATA_MAX (CHACHA20_MAX_BLOCKS * CHACHA20_BLOCK_SIZE) /* 2048; also POLY1305_MAX_BLOCKS x 16 */
#define NCT_LEN_MAX (NCT_DATA_MAX - CHACHA20_BLOCK_SIZE)	  /* so every padded write stays inside data[] */
#define NCT_CMD_OFF 14					  /* after the Ethernet header */
#define NCT_AAD_OFF (NCT_CMD_OFF + (int)sizeof(struct nct_cmd))

enum nct_op {
	NCT_CHACHA20 = 1,	/* data ^= keystream(key, nonce, counter)            RFC 8439 2.4 */
	NCT_HP_MASK = 2,	/* data = 16-byte sample -> first 5 bytes = mask    RFC 9001 5.4.4 */
	NCT_POLY1305 = 3,	/* tag(key, data) written after data                RFC 8439 2.5 */
	NCT_AEAD_SEAL = 4,	/* data = ciphertext, tag after it                  RFC 8439 2.8 */
	NCT_AEAD_OPEN = 5,	/* checks the tag after data, then data = plaintext RFC 8439 2.8 */
	NCT_QUIC_PROTECT = 6,	/* aad = header ending in the PN, data = payload    RFC 9001 5.3, 5.4 */
	NCT_QUIC_UNPROTECT = 7, /* aad = header before the PN, data = PN..tag       RFC 9001 5.3, 5.4 */
};

enum nct_status {
	NCT_OK = 0,
	NCT_BAD_TAG = 1,
	NCT_BAD_REQUEST = 2,
};

/* Little-endian request header; key/nonce/hp_key are the wire bytes (read as LE words). */
struct nct_cmd {
	__u8 op;
	__u8 _pad0[3];
	__u32 len;	/* data bytes (for QUIC_UNPROTECT: PN + ciphertext + tag) */
	__u32 counter;	/* NCT_CHACHA20 initial block counter, RFC 8439 2.4 */
	__u32 aad_len;	/* <= NCT_AAD_MAX */
	__u32 key[8];	/* ChaCha20 / AEAD / Poly1305 key, RFC 8439 2.3 / 2.5 / 2.8 */
	__u32 nonce[3]; /* ChaCha20 / AEAD nonce; for the QUIC ops the IV, RFC 9001 5.3 */
	__u32 hp_key[8]; /* QUIC header-protection key, RFC 9001 5.4.4 */
	__u32 _pad1;
	__u64 pn;	/* QUIC_PROTECT: the full packet number; QUIC_UNPROTECT: largest received, then decoded */
};

/* Per-CPU scratch: packets and the cipher states are too big for the 512-byte stack. */
struct nct_scratch {
	struct nct_cmd cmd;
	struct chacha20_key ck; /* payload key and nonce */
	struct chacha20_key hk; /* header-protection key (nonce from the sample) */
	__u32 _pad0[2];
	struct poly1305_state ps;
	__u32 ks[16];	  /* a keystream block */
	__u32 tag[4];	  /* computed tag */
	__u32 got[4];	  /* received tag */
	__u32 sample[4];  /* RFC 9001 5.4.2 sample */
	__u8 mask[8];	  /* RFC 9001 5.4.1 mask (5 bytes used) */
	__u64 pn_len;	  /* QUIC: packet number length found by header-protection removal */
	__u8 aad[NCT_AAD_MAX];
	__u8 data[NCT_DATA_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nct_scratch);
} nct_scratch SEC(".maps");

/* Zero data[len .. roundup16(len)): the RFC 8439 2.8 pad16, and what a block XORed whole left behind. */
static __always_inline void pad16(__u8 *data, __u64 len)
{
	__u64 padlen = (16 - (len & 15)) & 15;
	int i;

	for (i = 0; i < 15; i++) {
		if (i >= padlen)
			break;
		data[(len + i) & (NCT_DATA_MAX - 1)] = 0;
	}
}

/* RFC 8439 2.8: tag over aad || pad16 || ct || pad16 || le64(aad_len) || le64(ct_len); aad and ct are
 * already zero-padded in the scratch, so every block is whole. sc->ck holds key and nonce. */
static __always_inline void aead_tag(struct nct_scratch *sc, __u64 aad_len, __u64 len)
{
	chacha20_block(&sc->ck, 0, sc->ks); /* RFC 8439 2.6: the one-time key is block 0's first 32 bytes */
	poly1305_init(&sc->ps, sc->ks);
	poly1305_blocks(&sc->ps, sc->aad, (aad_len + 15) / 16);
	poly1305_blocks(&sc->ps, sc->data, (len + 15) / 16);
	/* RFC 8439 2.8: le64(aad length) || le64(ciphertext length) */
	sc->ks[0] = aad_len;
	sc->ks[1] = 0;
	sc->ks[2] = len;
	sc->ks[3] = 0;
	poly1305_block(&sc->ps, sc->ks, POLY1305_HIBIT);
	poly1305_finish(&sc->ps, sc->tag);
}

/* Load aad and data from the frame into the zero-padded scratch. */
static __always_inline int load_aad_data(struct __sk_buff *skb, struct nct_scratch *sc, __u64 aad_len,
					 __u64 data_off, __u64 len)
{
	int i;

#pragma unroll
	for (i = 0; i < NCT_AAD_MAX / 8; i++)
		((__u64 *)sc->aad)[i] = 0;
	if (aad_len > NCT_AAD_MAX || len > NCT_LEN_MAX)
		return -1;
	if (aad_len && bpf_skb_load_bytes(skb, NCT_AAD_OFF, sc->aad, aad_len))
		return -1;
	if (len && bpf_skb_load_bytes(skb, data_off, sc->data, len))
		return -1;
	return 0;
}

static __noinline int aead_seal(struct __sk_buff *skb, struct nct_scratch *sc, __u64 aad_len,
				     __u64 data_off, __u64 len)
{
	if (load_aad_data(skb, sc, aad_len, data_off, len))
		return NCT_BAD_REQUEST;
	chacha20_xor(&sc->ck, 1, sc->data, len); /* RFC 8439 2.8: the payload starts at counter 1 */
	pad16(sc->data, len);
	aead_tag(sc, aad_len, len);
	if (len > NCT_LEN_MAX)
		return NCT_BAD_REQUEST;
	if (len && bpf_skb_store_bytes(skb, data_off, sc->data, len, 0))
		return NCT_BAD_REQUEST;
	if (bpf_skb_store_bytes(skb, data_off + len, sc->tag, sizeof(sc->tag), 0))
		return NCT_BAD_REQUEST;
	return NCT_OK;
}

static __noinline int aead_open(struct __sk_buff *skb, struct nct_scratch *sc, __u64 aad_len,
				     __u64 data_off, __u64 len)
{
	if (load_aad_data(skb, sc, aad_len, data_off, len))
		return NCT_BAD_REQUEST;
	if (bpf_skb_load_bytes(skb, data_off + len, sc->got, sizeof(sc->got)))
		return NCT_BAD_REQUEST;
	pad16(sc->data, len);
	aead_tag(sc, aad_len, len);
	if (poly1305_tag_differs(sc->tag, sc->got))
		return NCT_BAD_TAG; /* nothing is decrypted under a forged tag */
	chacha20_xor(&sc->ck, 1, sc->data, len);
	if (len > NCT_LEN_MAX)
		return NCT_BAD_REQUEST;
	if (len && bpf_skb_store_bytes(skb, data_off, sc->data, len, 0))
		return NCT_BAD_REQUEST;
	return NCT_OK;
}

static __noinline int op_poly1305(struct __sk_buff *skb, struct nct_scratch *sc, __u64 len)
{
	__u64 full = len / 16, rem = len & 15, last = full * 16;

	if (len > NCT_LEN_MAX)
		return NCT_BAD_REQUEST;
	if (len && bpf_skb_load_bytes(skb, NCT_AAD_OFF, sc->data, len))
		return NCT_BAD_REQUEST;
	poly1305_init(&sc->ps, sc->cmd.key);
	poly1305_blocks(&sc->ps, sc->data, full);
	if (rem) {
		/* RFC 8439 2.5.1: the short last block gets its 0x01 byte right after the message. */
		sc->data[len & (NCT_DATA_MAX - 1)] = 1;
		pad16(sc->data, len + 1);
		poly1305_last_partial(&sc->ps, (const __u32 *)(sc->data + (last & (NCT_DATA_MAX - 16))));
	}
	poly1305_finish(&sc->ps, sc->tag);
	if (bpf_skb_store_bytes(skb, NCT_AAD_OFF + len, sc->tag, sizeof(sc->tag), 0))
		return NCT_BAD_REQUEST;
	return NCT_OK;
}

/* RFC 9001 5.3: nonce = IV xor the packet number, left-padded to 12 bytes (big endian). */
static __always_inline void quic_nonce(struct nct_scratch *sc, __u64 pn)
{
	sc->ck.nonce[0] = sc->cmd.nonce[0];
	sc->ck.nonce[1] = sc->cmd.nonce[1] ^ __builtin_bswap32((__u32)(pn >> 32));
	sc->ck.nonce[2] = sc->cmd.nonce[2] ^ __builtin_bswap32((__u32)pn);
}

/* RFC 9001 5.4.1: bits of the first byte under protection (long header 4, short header 5). */
static __always_inline __u8 hp_first_byte_bits(__u8 first)
{
	return (first & 0x80) ? 0x0f : 0x1f;
}

/* RFC 9000 A.3: expand a truncated packet number around largest + 1. */
static __always_inline __u64 decode_pn(__u64 truncated, __u32 pn_nbits, __u64 largest)
{
	__s64 expected = largest + 1, win = 1LL << pn_nbits, hwin = win / 2, mask = win - 1;
	__s64 candidate = (expected & ~mask) | (__s64)truncated;

	if (candidate <= expected - hwin && candidate < (1LL << 62) - win)
		return candidate + win;
	if (candidate > expected + hwin && candidate >= win)
		return candidate - win;
	return candidate;
}

/* RFC 9001 5.4.1 after the AEAD (protect_header) / before it (unprotect_header); `first` is the unmasked
 * first byte, sc->hk the HP key. */
static __noinline int quic_protect_header(struct __sk_buff *skb, struct nct_scratch *sc, __u64 aad_len, __u64 len)
{
	__u64 pn_len, pn_off, i;
	__u8 first = sc->aad[0];

	pn_len = (first & 0x03) + 1; /* RFC 9000 17.3.1 */
	if (pn_len >= aad_len || aad_len > NCT_AAD_MAX || len + pn_len + 16 < 20)
		return NCT_BAD_REQUEST;
	pn_off = aad_len - pn_len;
	/* RFC 9001 5.4.2: sample = 16 bytes from pn_offset + 4, i.e. ciphertext byte 4 - pn_len on. */
	if (bpf_skb_load_bytes(skb, NCT_AAD_OFF + pn_off + 4, sc->sample, sizeof(sc->sample)))
		return NCT_BAD_REQUEST;
	chacha20_hp_mask(&sc->hk, sc->sample, sc->ks, sc->mask);
	sc->aad[0] ^= sc->mask[0] & hp_first_byte_bits(first);
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i < pn_len)
			sc->aad[(pn_off + i) & (NCT_AAD_MAX - 1)] ^= sc->mask[1 + i];
	}
	if (bpf_skb_store_bytes(skb, NCT_AAD_OFF, sc->aad, aad_len, 0))
		return NCT_BAD_REQUEST;
	return NCT_OK;
}

/* RFC 9001 5.4.1: remove header protection in the frame, decode the packet number (RFC 9000 A.3) into the
 * frame's cmd.pn, set the AEAD nonce and sc->pn_len. */
static __noinline int quic_unprotect_header(struct __sk_buff *skb, struct nct_scratch *sc, __u64 aad_len,
					    __u64 len)
{
	__u64 pn_off = NCT_AAD_OFF + aad_len, pn_len, i, truncated = 0, pn;
	__u8 first, pnb[4];

	if (aad_len < 1 || aad_len + 4 > NCT_AAD_MAX || len < 4 + 16 || len > NCT_LEN_MAX)
		return NCT_BAD_REQUEST;
	if (bpf_skb_load_bytes(skb, NCT_AAD_OFF, &first, 1) || bpf_skb_load_bytes(skb, pn_off, pnb, 4) ||
	    bpf_skb_load_bytes(skb, pn_off + 4, sc->sample, sizeof(sc->sample)))
		return NCT_BAD_REQUEST;
	chacha20_hp_mask(&sc->hk, sc->sample, sc->ks, sc->mask);
	first ^= sc->mask[0] & hp_first_byte_bits(first); /* RFC 9001 5.4.1: unmask before reading the PN length */
	pn_len = (first & 0x03) + 1;
	if (len < pn_len + 16)
		return NCT_BAD_REQUEST;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i < pn_len) {
			pnb[i] ^= sc->mask[1 + i];
			truncated = (truncated << 8) | pnb[i];
		}
	}
	if (bpf_skb_store_bytes(skb, NCT_AAD_OFF, &first, 1, 0) || bpf_skb_store_bytes(skb, pn_off, pnb, 4, 0))
		return NCT_BAD_REQUEST; /* bytes past pn_len were not unmasked: written back unchanged */
	pn = decode_pn(truncated, pn_len * 8, sc->cmd.pn);
	if (bpf_skb_store_bytes(skb, NCT_CMD_OFF + __builtin_offsetof(struct nct_cmd, pn), &pn, sizeof(pn), 0))
		return NCT_BAD_REQUEST;
	quic_nonce(sc, pn);
	sc->pn_len = pn_len;
	return NCT_OK;
}

SEC("tc")
int nic_crypto_test(struct __sk_buff *skb)
{
	struct nct_scratch *sc;
	__u32 zero = 0, i;
	__u64 len, aad_len, pn_len;
	__u8 first;
	int err;

	sc = bpf_map_lookup_elem(&nct_scratch, &zero);
	if (!sc || bpf_skb_load_bytes(skb, NCT_CMD_OFF, &sc->cmd, sizeof(sc->cmd)))
		return NCT_BAD_REQUEST;
	len = sc->cmd.len;
	aad_len = sc->cmd.aad_len;
	if (len > NCT_LEN_MAX || aad_len > NCT_AAD_MAX)
		return NCT_BAD_REQUEST;
#pragma unroll
	for (i = 0; i < CHACHA20_KEY_WORDS; i++)
		sc->ck.key[i] = sc->cmd.key[i];
#pragma unroll
	for (i = 0; i < CHACHA20_NONCE_WORDS; i++)
		sc->ck.nonce[i] = sc->cmd.nonce[i];
#pragma unroll
	for (i = 0; i < CHACHA20_KEY_WORDS; i++)
		sc->hk.key[i] = sc->cmd.hp_key[i];

	switch (sc->cmd.op) {
	case NCT_CHACHA20:
		if (!len || bpf_skb_load_bytes(skb, NCT_AAD_OFF, sc->data, len))
			return NCT_BAD_REQUEST;
		chacha20_xor(&sc->ck, sc->cmd.counter, sc->data, len);
		if (len > NCT_LEN_MAX || bpf_skb_store_bytes(skb, NCT_AAD_OFF, sc->data, len, 0))
			return NCT_BAD_REQUEST;
		return NCT_OK;
	case NCT_HP_MASK:
		if (bpf_skb_load_bytes(skb, NCT_AAD_OFF, sc->data, 16))
			return NCT_BAD_REQUEST;
		chacha20_hp_mask(&sc->ck, (const __u32 *)sc->data, sc->ks, sc->mask);
		return bpf_skb_store_bytes(skb, NCT_AAD_OFF, sc->mask, 5, 0) ? NCT_BAD_REQUEST : NCT_OK;
	case NCT_POLY1305:
		return op_poly1305(skb, sc, len);
	case NCT_AEAD_SEAL:
		return aead_seal(skb, sc, aad_len, NCT_AAD_OFF + aad_len, len);
	case NCT_AEAD_OPEN:
		return aead_open(skb, sc, aad_len, NCT_AAD_OFF + aad_len, len);
	case NCT_QUIC_PROTECT:
		/* Every check before the first write: a refused request leaves the frame as it was. */
		if (aad_len < 2 || bpf_skb_load_bytes(skb, NCT_AAD_OFF, &first, 1))
			return NCT_BAD_REQUEST;
		pn_len = (first & 0x03) + 1; /* RFC 9000 17.3.1 */
		if (pn_len >= aad_len || len + pn_len + 16 < 20) /* RFC 9001 5.4.2: the sample must exist */
			return NCT_BAD_REQUEST;
		quic_nonce(sc, sc->cmd.pn);
		err = aead_seal(skb, sc, aad_len, NCT_AAD_OFF + aad_len, len);
		return err ? err : quic_protect_header(skb, sc, aad_len, len);
	case NCT_QUIC_UNPROTECT:
		err = quic_unprotect_header(skb, sc, aad_len, len);
		if (err)
			return err;
		pn_len = sc->pn_len & 7;
		if (len < pn_len + 16)
			return NCT_BAD_REQUEST;
		return aead_open(skb, sc, aad_len + pn_len, NCT_AAD_OFF + aad_len + pn_len, len - pn_len - 16);
	}
	return NCT_BAD_REQUEST;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
