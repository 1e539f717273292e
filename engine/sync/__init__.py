"""Ingest: reading customer, event and suppression files (and the public data sets), the one
definition of a valid row, bulk writes and the refresh of derived facts.

Writes. May import: engine.errors, engine.clock, engine.store.
"""
