"""The `retain` command line."""
