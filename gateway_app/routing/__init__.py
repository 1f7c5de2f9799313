"""Routing: the registry of backends, the proxy that forwards one call, and what they measure."""
