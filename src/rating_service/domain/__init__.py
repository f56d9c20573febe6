"""Tariffs and pricing, with no I/O."""
