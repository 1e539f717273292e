"""Read-only questions to the store: one statement per playbook (evaluate), explain, the
customer view.

Only reads. May import: engine.errors, engine.clock, engine.store, engine.format.
"""
