/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The benchmark floor (DESIGN section 6): clone every packet to N configured devices with
 * bpf_clone_redirect and pass the original up, with no parsing at all. Its per-copy cost is what
 * the relay's fast path is compared against.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAPS_FLOOR
#include "maps.h"

const volatile struct floor_config floor_cfg = {};

SEC("tc")
int floor_clone(struct __sk_buff *skb)
{
	__u32 ok = 0, err = 0, key;
	__u64 *n;

	for (int i = 0; i < FLOOR_MAX_TARGETS; i++) {
		if (i >= floor_cfg.count)
			break;
		if (bpf_clone_redirect(skb, floor_cfg.ifindex[i], 0))
			err++;
		else
			ok++;
	}
	key = 0;
	n = bpf_map_lookup_elem(&floor_stats, &key);
	if (n)
		*n += ok;
	key = 1;
	n = bpf_map_lookup_elem(&floor_stats, &key);
	if (n)
		*n += err;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
