"""The MoQT draft-14 relay: codec, sessions on aioquic, routing, fast-path control and the CLI."""
