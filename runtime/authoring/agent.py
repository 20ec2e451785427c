"""What users write for an agent role: the ``Agent`` base class.

Apart from the machinery that runs it (``runtime.replicas.replica``: the replica, the pool, the context a
handler sees), so the catalogue, which only needs to recognise an ``Agent`` subclass, does not import
the event bus, the engines and the tool router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from runtime.core.config import AgentPoolConfig
from runtime.core.models import AgentMessage

if TYPE_CHECKING:
    from runtime.replicas.replica import AgentContext


class Agent:
    """Subclass with ``role = "..."`` and ``async def handle(self, msg, ctx)``; one instance per replica."""

    role: ClassVar[str] = ""
    #: Topic patterns (``docs.*``) whose events come to this role's mailbox, one message per
    #: delivery; ``msg.event`` is the event and ``msg.redelivered`` says it may have come before.
    subscribes: ClassVar[list[str]] = []
    min_replicas: ClassVar[int | None] = None
    max_replicas: ClassVar[int | None] = None
    concurrency: ClassVar[int | None] = None

    async def setup(self) -> None:
        """Called once per replica before its first message (load a model, open a client)."""

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> Any:
        raise NotImplementedError

    @classmethod
    def pool_config(cls, override: AgentPoolConfig | None = None) -> AgentPoolConfig:
        if override is not None:
            return override
        declared = {k: getattr(cls, k) for k in ("min_replicas", "max_replicas", "concurrency")
                    if getattr(cls, k) is not None}
        return AgentPoolConfig(**declared)
