"""Alembic migrations for the Retain store (batch mode on SQLite)."""
