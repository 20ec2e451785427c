"""Tools: typed functions that agents and workflows call through executors, gates and retries.

``@tool`` declares one (``registry``); ``executor`` runs calls; ``fetch``, ``extract`` and ``sql`` are
the built-ins. ``ctx.tool(name, **args)`` in a workflow is a checkpointed step.
"""

from runtime.tools.registry import Batch, Registry, Tool, ToolContext, tool


def builtin_tools() -> dict[str, Tool]:
    from runtime.tools.extract import extract_text
    from runtime.tools.fetch import http_fetch
    from runtime.tools.sql import sql_query

    return {t.name: t for t in (http_fetch, extract_text, sql_query)}


__all__ = ["Batch", "Registry", "Tool", "ToolContext", "builtin_tools", "tool"]
