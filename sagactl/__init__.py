"""sagactl: the operator and developer CLI, talking gRPC to the router (place, get, list, watch, dlq, top)."""
