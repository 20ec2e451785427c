"""The simulated engine: a real, documented backend for tests and benchmarks, not a language model.

Its text is a deterministic function of the prompt (the same prompt always gives the same words), and
its timing follows a latency model: ``ttft_s`` before the first token, ``tpot_s`` per token after it,
at most ``max_concurrency`` requests at once (later ones wait their turn). It keeps the arrival and
end time of its last requests (``timeline``), so a test or benchmark can check what an upstream saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from runtime.core.config import SimulatedEngineConfig
from runtime.core.models import ChatRequest, Completion, Usage

_WORDS = (
    "agents coordinate work through queues while durable steps record each result so that a "
    "failure resumes where it stopped and rate limits keep shared models within their budgets "
    "evidence suggests the sources agree on the main findings but differ on details worth review"
).split()


def simulated_text(prompt: str, max_tokens: int) -> list[str]:
    """The words the simulated engine answers ``prompt`` with: deterministic, 8 to 40 of them."""
    digest = hashlib.sha256(prompt.encode()).digest()
    n = min(max_tokens, 8 + digest[0] % 33)
    words = [_WORDS[(digest[i % 32] + i * 7) % len(_WORDS)] for i in range(n)]
    words[0] = words[0].capitalize()
    return [w + ("." if i == n - 1 else " ") for i, w in enumerate(words)]


def prompt_text(request: ChatRequest) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages)


class SimulatedEngine:
    def __init__(self, model: str, config: SimulatedEngineConfig) -> None:
        self.model = model
        self.config = config
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self.timeline: deque[tuple[float, float]] = deque(maxlen=100_000)  # (arrived, ended), epoch s

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        async with self._slots:
            rid = request.request_id or ""
            self._running.add(rid)
            try:
                await asyncio.sleep(self.config.ttft_s)
                for i, token in enumerate(simulated_text(prompt_text(request), request.max_tokens)):
                    if rid in self._aborted:
                        return
                    if i and self.config.tpot_s:
                        await asyncio.sleep(self.config.tpot_s)
                    yield token
            finally:
                self._running.discard(rid)
                self._aborted.discard(rid)

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        tokens = []
        arrived = time.time()
        try:
            async for token in self.stream(request):
                tokens.append(token)
                if on_text is not None:
                    await on_text(token)
        finally:
            self.timeline.append((arrived, time.time()))
        full = simulated_text(prompt_text(request), request.max_tokens)
        finish: Literal["stop", "length", "abort"] = "stop"
        if len(tokens) < len(full):
            finish = "abort"
        elif len(full) == request.max_tokens:
            finish = "length"
        return Completion(
            model=self.model, text="".join(tokens), finish_reason=finish,
            usage=Usage(prompt_tokens=len(prompt_text(request).split()), completion_tokens=len(tokens)),
        )

    async def abort(self, request_id: str) -> bool:
        if request_id in self._running:
            self._aborted.add(request_id)
            return True
        return False
