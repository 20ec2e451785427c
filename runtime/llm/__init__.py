"""LLM engines: the protocol, the implementations, and the actor that hosts one."""
