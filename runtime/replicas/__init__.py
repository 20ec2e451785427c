"""Agents at work: the agent replica (a message loop) and the pool that sizes a role's replicas to
its mailbox (the concrete roles are the top-level agents/)."""
