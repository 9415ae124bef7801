"""Shared vocabulary of every layer: no I/O, no imports from the rest of the gateway."""
