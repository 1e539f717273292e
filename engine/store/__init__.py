"""The database: tables, opening (and, only where a command may write, migrating) a store,
the SQLite/PostgreSQL differences, the derived-fact definitions and the Alembic migrations.

May import: engine.errors, engine.clock. Schema changes (DDL) happen here and nowhere else.
"""
