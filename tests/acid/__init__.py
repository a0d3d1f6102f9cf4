"""ACID across services (issue 31): the isolated order flow (common/definitions/shipped/order_isolated.yaml) on real
processes, its isolation countermeasures checked over what the services applied and what a reader saw
(tests/helpers/isolation.py, service_stubs/invariants.py)."""
