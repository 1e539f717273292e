"""From candidates to the Plan a live run commits: who enters, holdout, limits, idempotency keys,
due times, rendered actions.

Only reads. May import: engine.errors, engine.clock, engine.store, engine.format, engine.query,
and the connectors through the registry.
"""
