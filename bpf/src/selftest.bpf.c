/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loader self-test program (not part of the relay): proves that .rodata is set before load, that
 * user-space map updates reach the program, and that ring-buffer records reach user space.
 * Verdict: TC_ACT_OK when selftest_hash holds key {conn_id = 1, alias = 2}, else TC_ACT_SHOT.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAPS_SELFTEST
#include "maps.h"

const volatile struct selftest_config selftest_cfg = {};
__u64 selftest_seq = 0;
/* The last record sent (also keeps struct selftest_event in the object's BTF). */
struct selftest_event selftest_last = {};

SEC("tc")
int selftest(struct __sk_buff *skb)
{
	struct track_key key = { .conn_id = 1, .alias = 2 };
	struct selftest_event *ev;

	ev = bpf_ringbuf_reserve(&selftest_events, sizeof(*ev), 0);
	if (ev) {
		ev->seq = __sync_fetch_and_add(&selftest_seq, 1);
		ev->len = skb->len;
		ev->magic = selftest_cfg.magic;
		selftest_last = *ev;
		bpf_ringbuf_submit(ev, 0);
	}
	return bpf_map_lookup_elem(&selftest_hash, &key) ? TC_ACT_OK : TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
