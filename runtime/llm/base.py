"""The engine protocol: what every LLM backend provides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from runtime.core.models import ChatRequest, Completion


class Engine(Protocol):
    model: str

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield the completion's text piece by piece (one token at a time where the engine can)."""

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        """Run the request to the end, passing each piece of text to ``on_text`` as it comes."""

    async def abort(self, request_id: str) -> bool:
        """Stop an in-flight request; False if it was not running."""
