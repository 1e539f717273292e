"""The playbook language: strict YAML, the models, every trigger/condition/action kind, templates,
validation and the JSON Schema, and what each kind means in SQL.

Pure: builds values and SQL expressions, never opens a connection or runs a statement.
May import: engine.errors, engine.clock, engine.store.tables, engine.store.dialect,
engine.store.facts (definitions only).
"""
