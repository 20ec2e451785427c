"""Flow control in memory: gates (rate, concurrency, priority, fair share) and the priority queues
and mailboxes. Imports core and actors."""
