"""The Store: the protocol (base), its implementations, and the actor that serves one to a cluster."""
