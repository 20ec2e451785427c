"""What an actor of the runtime needs of the others, found by name in the runtime's namespace.

Restartable actors take only small values as constructor arguments (their settings, the app modules,
a role) and find their peers here: Ray keeps small arguments with the actor's spec, so a restart can
always build the actor again, whereas arguments stored as objects may be gone by then
(ray-project/ray#53727).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.actors import names
from runtime.actors.handles import actor_names
from runtime.authoring.catalog import Catalog, load_catalog
from runtime.core.config import Settings
from runtime.durable.dispatch import DispatcherHandle
from runtime.flow.queue import MailboxHandle
from runtime.llm.engine import Router, find_engines
from runtime.store.connect import store_for
from runtime.store.service import StoreService
from runtime.tools import Registry
from runtime.tools.executor import ToolExecutorHandle, ToolRouter
from runtime.tools.mcp import mcp_tools


@dataclass
class Peers:
    catalog: Catalog
    store: StoreService
    mailboxes: dict[str, MailboxHandle]
    router: Router
    tools: ToolRouter

    def dispatcher(self, namespace: str) -> DispatcherHandle:
        return DispatcherHandle.find(namespace)


def find_peers(settings: Settings, apps: list[str]) -> Peers:
    """The Store, the mailboxes, the engines and the tool executors of the runtime in
    ``settings.namespace``, and the app modules' catalogue."""
    namespace = settings.namespace
    catalog = load_catalog(apps)
    low, high = settings.engine_replicas
    # Engines that autoscale are looked up again as they come and go.
    router = Router.for_settings(
        settings, find_engines(namespace),
        discover=(lambda: find_engines(namespace)) if high > low else None)
    executors = [ToolExecutorHandle.named(n, namespace) for n in actor_names(namespace, names.TOOLS_PREFIX)]
    mailboxes = {role: MailboxHandle.named(names.agent_mailbox(role), namespace)
                 for role in catalog.agents}
    return Peers(catalog, store_for(settings), mailboxes, router,
                 ToolRouter(Registry({**catalog.tools, **mcp_tools(settings)}), executors))
