"""Durable workflows: the dispatcher, the workflow worker and its pool, one run."""
