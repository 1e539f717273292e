"""Read-only questions to the store: one statement per playbook (evaluate), explain, the
customer view, and the warning for an as-of far past the latest event (staleness).

Only reads. May import: engine.errors, engine.clock, engine.store, engine.format.
"""
