"""TC eBPF programs (C sources in ``src/``), their build, and a libbpf loader through ctypes."""
