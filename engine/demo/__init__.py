"""The demo database of `retain demo`: a sample of a public data set shipped in data/.

Only the CLI imports it. May import everything below it (store, sync).
"""
