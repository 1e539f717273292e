"""The outbox: committing plans, delivering them, and the live cycle around both."""
