"""Retain engine: playbooks, customer state, evaluation and planning.

The CLI and connectors import from the submodules directly; nothing here has side effects.
"""
