"""The engine actor hosts one engine for one model; the Router sends requests to a model's actors."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ray

from runtime.config import Settings
from runtime.engines.base import Engine
from runtime.engines.simulated import SimulatedEngine
from runtime.errors import ModelNotFound
from runtime.models import ChatRequest, Completion


def build_engine(settings: Settings, model: str) -> Engine:
    if settings.engine == "simulated":
        return SimulatedEngine(model, settings.simulated)
    raise ValueError(f"unknown engine {settings.engine!r}")


class EngineActor:
    def __init__(self, settings: Settings, model: str) -> None:
        self.engine = build_engine(settings, model)
        self.in_flight = 0

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        """Run a request; with ``stream_to``, its text goes to the task's events as it is generated."""
        self.in_flight += 1
        try:
            if stream_to is None:
                return await self.engine.chat(request)
            on_text, flush = stream_to.writer()
            completion = await self.engine.chat(request, on_text)
            await flush()
            return completion
        finally:
            self.in_flight -= 1

    async def abort(self, request_id: str) -> bool:
        return await self.engine.abort(request_id)

    async def load(self) -> int:
        return self.in_flight


@dataclass(frozen=True)
class TokenSink:
    """Where generated text goes: ``tokens`` events on a task, batched every ``every_s`` seconds."""

    store: Any
    task_id: str
    step: str
    every_s: float = 0.1

    def writer(self) -> tuple[Callable[[str], Awaitable[None]], Callable[[], Awaitable[None]]]:
        pending: list[str] = []
        state = {"last": time.monotonic(), "n": 0}

        async def flush() -> None:
            if pending:
                state["n"] += 1
                text = "".join(pending)
                pending.clear()
                await self.store.append_event.remote(
                    self.task_id, "tokens", {"step": self.step, "n": state["n"], "text": text})
            state["last"] = time.monotonic()

        async def on_text(text: str) -> None:
            pending.append(text)
            if time.monotonic() - state["last"] >= self.every_s:
                await flush()

        return on_text, flush


class Router:
    """Picks an engine actor for a request: a random replica of the request's model."""

    def __init__(self, replicas: dict[str, list[Any]]) -> None:
        self.replicas = replicas

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        handles = self.replicas.get(request.model)
        if not handles:
            raise ModelNotFound(request.model, tuple(self.replicas))
        result: Completion = await random.choice(handles).chat.remote(request, stream_to)
        return result


def start_engines(settings: Settings, models: list[str]) -> dict[str, list[Any]]:
    return {
        model: [
            ray.remote(EngineActor)
            .options(name=f"engine:{model}", namespace=settings.namespace, num_cpus=0,
                     max_concurrency=1000, max_restarts=-1)
            .remote(settings, model)
        ]
        for model in models
    }
