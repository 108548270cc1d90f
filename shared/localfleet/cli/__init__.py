"""The `localfleet` command: serve, list, call, up."""
