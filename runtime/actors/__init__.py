"""Reaching actors: typed handles with retries across restarts, every actor's name, cluster
options, pool members. Imports only core."""
