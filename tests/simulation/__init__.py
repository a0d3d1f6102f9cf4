"""Deterministic simulations of distributed protocols (pure Python, seeded)."""
