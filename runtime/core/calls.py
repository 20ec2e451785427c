"""What a model call asks for beyond its request, and the LLM memo's key: ``ModelPlan`` (its
fallback models, the memo, its retries, its dead letter), ``want_memo`` (whether the memo may
answer) and ``memo_key``. Here, below everything, because what users write (``ctx.llm.chat``,
``AgentContext.chat``) builds a plan, and ``runtime.llm.calls`` carries it out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from runtime.core.config import RetryPolicy
from runtime.core.errors import ConfigError
from runtime.core.models import ChatRequest
from runtime.core.retry import Retrying

ONE_ATTEMPT = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ModelPlan:
    """How one model call is made, besides its request: the models to fall back on, in order;
    whether the memo may answer it (decided already: ``want_memo``); the retries on each model
    and each attempt's timeout; whether a call that runs out of models is kept as a dead letter;
    whom to tell of each retry."""

    fallback_models: tuple[str, ...] = ()
    cache: bool = False
    retry: RetryPolicy = ONE_ATTEMPT
    timeout_s: float | None = None
    dead_letter: bool = False
    on_retry: Callable[[Retrying], None] | None = None

    def models(self, first: str) -> tuple[str, ...]:
        """The models the call may use, in order: ``first``, then the fallbacks (each once)."""
        return tuple(dict.fromkeys((first, *self.fallback_models)))


def want_memo(call: bool | None, *defaults: bool | None, temperature: float) -> bool:
    """Whether the memo answers a call: what the call says (``cache=``), else the first default
    that says anything (the agent's ``cache``, then the deployment's ``RAYSQUAD_LLM_CACHE``), and
    only at temperature 0. A call that asks for the memo itself at another temperature is a
    ConfigError: its answer is drawn at random, not a function of the request."""
    if call and temperature != 0:
        raise ConfigError(f"cache=True needs temperature 0, not {temperature}: only a "
                          "temperature-0 answer is the same each time it is asked")
    chosen = next((d for d in (call, *defaults) if d is not None), False)
    return bool(chosen) and temperature == 0


def memo_key(request: ChatRequest) -> str:
    """The memo's key of a request: the SHA-256 of the canonical JSON (sorted keys, no spaces) of
    what decides its answer: the tenant (tenants never share an entry), the model, the messages,
    the tools, the tool choice, the response format and the sampling (max_tokens, temperature).
    Not its id, priority or anything else about who sends it when."""
    decides = {
        "v": 1, "tenant": request.tenant, "model": request.model,
        "messages": [m.model_dump(mode="json") for m in request.messages],
        "tools": [t.model_dump(mode="json") for t in request.tools],
        "tool_choice": request.tool_choice,
        "response_format": (request.response_format.model_dump(mode="json")
                            if request.response_format is not None else None),
        "max_tokens": request.max_tokens, "temperature": request.temperature,
    }
    text = json.dumps(decides, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
