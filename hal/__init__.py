"""NIC hardware abstraction layer: ports, program placement, QUIC key install, capabilities, teardown."""
