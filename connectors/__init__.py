"""Connectors that act on plans: email, tasks, points, webhooks (built in a later issue)."""
