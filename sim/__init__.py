"""Simulated network: namespaces, links, shaping, the simulated NIC, media sources and scenarios."""
