"""Chaos suite: seeded faults against the local cluster, invariants checked over what the services applied."""
