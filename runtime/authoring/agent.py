"""What users write for an agent role: the ``Agent`` base class.

Apart from the machinery that runs it (``runtime.replicas.replica``: the replica, the pool, the context a
handler sees), so the catalogue, which only needs to recognise an ``Agent`` subclass, does not import
the event bus, the engines and the tool router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from runtime.core.config import AgentPoolConfig
from runtime.core.models import AgentMessage

if TYPE_CHECKING:
    from runtime.replicas.replica import AgentContext


class Agent:
    """Subclass with ``role = "..."`` and either ``async def handle(self, msg, ctx)`` or a declared
    loop; one instance per replica.

    A declared agent names ``instructions`` (a string, or a method of the message), ``tools`` (names
    of tools the app modules define, ``@tool`` functions, OpenAI function specs, or
    ``"agent:<role>"`` to offer another role as a tool whose reply is the call's result), an
    ``output_type`` (a pydantic model its final answer must fit), ``handoffs`` (roles it may hand
    the conversation to), ``max_turns``, a ``model`` (and ``fallback_models``), and ``cache``; with
    no ``handle`` of its own, its handler
    is the loop (``AgentContext.run_loop``): model call, the turn's tool calls, model call, until a
    final answer. A custom ``handle`` may call the same loop."""

    role: ClassVar[str] = ""
    instructions: ClassVar[str | None] = None
    tools: ClassVar[list[Any]] = []
    output_type: ClassVar[type[BaseModel] | None] = None
    handoffs: ClassVar[list[str]] = []
    max_turns: ClassVar[int] = 10
    #: Calls the model may make with a tool it was not offered or arguments that do not fit, each
    #: answered with the problem as the tool's result, before the loop fails.
    max_tool_errors: ClassVar[int] = 3
    model: ClassVar[str | None] = None
    #: Models its calls go to, in order, when the tries on ``model`` ran out (a call may name its
    #: own: ``ctx.chat(..., fallback_models=[...])``).
    fallback_models: ClassVar[list[str]] = []
    #: Whether the Store's memo answers its temperature-0 model calls that this tenant asked
    #: before (None: as the deployment says, ``RAYSQUAD_LLM_CACHE``; a call's ``cache=`` wins).
    cache: ClassVar[bool | None] = None
    #: Tools whose calls by this role wait for a person's approval, as a tool declared
    #: ``@tool(requires_approval=True)`` does for every caller (the agent's own policy).
    approve: ClassVar[list[str]] = []
    #: Topic patterns (``docs.*``) whose events come to this role's mailbox, one message per
    #: delivery; ``msg.event`` is the event and ``msg.redelivered`` says it may have come before.
    subscribes: ClassVar[list[str]] = []
    min_replicas: ClassVar[int | None] = None
    max_replicas: ClassVar[int | None] = None
    concurrency: ClassVar[int | None] = None

    async def setup(self) -> None:
        """Called once per replica before its first message (load a model, open a client)."""

    async def handle(self, msg: AgentMessage, ctx: AgentContext) -> Any:
        if not self.declared():
            raise NotImplementedError(f"agent role {self.role!r} declares no instructions, tools "
                                      "or output_type, and has no handle of its own")
        return await ctx.run_loop(msg.payload)

    @classmethod
    def declared(cls) -> bool:
        """Whether the class declares a loop (instructions, tools or an output type)."""
        return bool(cls.instructions or cls.tools or cls.output_type or cls.handoffs
                    or callable(getattr(cls, "instructions", None)))

    def instructions_for(self, msg: AgentMessage) -> str | None:
        """The system prompt for this message: ``instructions``, called with the message where it
        is a method."""
        given = getattr(self, "instructions", None)
        return given(msg) if callable(given) else given

    @classmethod
    def pool_config(cls, override: AgentPoolConfig | None = None) -> AgentPoolConfig:
        if override is not None:
            return override
        declared = {k: getattr(cls, k) for k in ("min_replicas", "max_replicas", "concurrency")
                    if getattr(cls, k) is not None}
        return AgentPoolConfig(**declared)
