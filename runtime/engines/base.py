"""The engine protocol: what every LLM backend provides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from runtime.models import ChatRequest, Completion


class Engine(Protocol):
    model: str

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield the completion's text piece by piece (one token at a time where the engine can)."""

    async def chat(self, request: ChatRequest) -> Completion:
        """Run the request to the end."""

    async def abort(self, request_id: str) -> bool:
        """Stop an in-flight request; False if it was not running."""
