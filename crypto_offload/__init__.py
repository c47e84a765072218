"""RFC 9001 QUIC packet protection and the NIC key-install API (no MoQT, no BPF here)."""
