"""An engine for any OpenAI-compatible endpoint, on the ``openai`` async client.

Streams chat completions; retries 429 and 5xx answers (and connection errors) with exponential backoff
that honours ``Retry-After``; wraps every failure in our picklable ``EngineError`` before it crosses
an actor boundary. With ``send_priority`` the task's priority goes along as vLLM's ``priority`` field.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import httpx
import openai

from runtime.config import OpenAIEngineConfig
from runtime.errors import EngineError
from runtime.models import ChatRequest, Completion, Usage

log = logging.getLogger(__name__)


def retry_after_s(error: openai.APIStatusError) -> float | None:
    """The server's Retry-After in seconds, if it sent one we can read."""
    value = error.response.headers.get("retry-after") if error.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIEngine:
    remote = True  # an upstream service: a request has reached it when its first chunk comes back
    def __init__(self, model: str, config: OpenAIEngineConfig,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self.model = model
        self.config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=os.environ.get(config.api_key_env) or "unused",
            max_retries=0, timeout=config.timeout_s,
            http_client=http_client)  # type: ignore[arg-type]
        self._running: dict[str, asyncio.Task[Any]] = {}
        # Told of each 429 with its Retry-After (the engine actor throttles the model's gate).
        self.on_throttled: Callable[[float | None], None] | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def put(text: str) -> None:
            await queue.put(text)

        async def run() -> None:
            try:
                await self.chat(request, put)
            finally:
                await queue.put(None)

        runner = asyncio.create_task(run())
        while (piece := await queue.get()) is not None:
            yield piece
        await runner

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(request, on_text)
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                if attempt >= self.config.max_attempts:
                    raise EngineError(self.model, f"{type(e).__name__} after {attempt} attempts: {e}",
                                      retryable=True) from None
                hinted = retry_after_s(e) if isinstance(e, openai.APIStatusError) else None
                if isinstance(e, openai.RateLimitError) and self.on_throttled is not None:
                    self.on_throttled(hinted)
                delay = hinted if hinted is not None else min(
                    self.config.max_backoff_s,
                    self.config.initial_backoff_s * 2 ** (attempt - 1) * (0.8 + 0.4 * random.random()))
                log.info("model %s: %s, retrying in %.2fs", self.model, type(e).__name__, delay)
                await asyncio.sleep(delay)
            except openai.APIError as e:
                raise EngineError(self.model, f"{type(e).__name__}: {e}") from None

    async def _once(self, request: ChatRequest,
                    on_text: Callable[[str], Awaitable[None]] | None) -> Completion:
        extra = {"priority": -request.priority} if self.config.send_priority else None
        stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
            model=self.config.remote_model or self.model,
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            max_tokens=request.max_tokens, temperature=request.temperature, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        pieces: list[str] = []
        finish: Literal["stop", "length", "abort"] = "stop"
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        current = asyncio.current_task()
        if request.request_id and current is not None:
            self._running[request.request_id] = current
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(prompt_tokens=chunk.usage.prompt_tokens,
                                  completion_tokens=chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        if on_text is not None:
                            await on_text(choice.delta.content)
                    if choice.finish_reason == "length":
                        finish = "length"
        except asyncio.CancelledError:
            finish = "abort"
        finally:
            if request.request_id:
                self._running.pop(request.request_id, None)
            await stream.close()
        return Completion(model=self.model, text="".join(pieces), usage=usage, finish_reason=finish)

    async def abort(self, request_id: str) -> bool:
        """Stop reading the request's stream; closing it makes the server abort the request."""
        task = self._running.get(request_id)
        if task is None:
            return False
        task.cancel()
        return True
