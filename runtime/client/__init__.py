"""The Python client, operator calls and the runtime overview."""
