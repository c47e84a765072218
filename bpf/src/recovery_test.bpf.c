/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test-only object: client_ingress plus a program that calls recovery_on_sent(), so the tests
 * drive both halves on the same maps through BPF_PROG_TEST_RUN, with a settable clock
 * (the test_clock map). Never attached.
 */
#define RECOVERY_TEST
#include "client_ingress.bpf.c"

/* The record a test run of recovery_sent carries as its packet (after a 14-byte Ethernet header). */
struct sent_cmd {
	__u64 pn;
	__u64 now;
	__u64 stream_id;
	__u64 stream_off;
	__u32 conn_index;
	__u32 size;
	__u32 stream_len;
	__u8 owner;
	__u8 stream_fin;
	__u8 _pad0[2];
};

SEC("tc")
int recovery_sent(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct sent_cmd *cmd = data + 14;
	struct recovery_state *st;
	__u32 idx;

	if ((void *)(cmd + 1) > end)
		return -1;
	idx = cmd->conn_index;
	st = bpf_map_lookup_elem(&recovery_state, &idx);
	if (!st)
		return -2;
	recovery_on_sent(st, cmd->pn, cmd->size, cmd->now, cmd->owner, cmd->stream_id, cmd->stream_off,
			 cmd->stream_len, cmd->stream_fin);
	return 0;
}
