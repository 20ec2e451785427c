"""The engine actor hosts one engine for one model; the Router sends requests to a model's actors."""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import ray

from runtime.actors import names
from runtime.actors.handles import ActorHandle, actor_names
from runtime.core import metrics
from runtime.core.config import Settings
from runtime.core.errors import ActorUnavailable, ModelNotFound, RaysquadError
from runtime.core.models import ChatRequest, Completion, Lease
from runtime.flow.gates import GateClient, GateKeeperHandle, Passage
from runtime.llm.base import Engine
from runtime.llm.routing import Picker, RoutingPolicy
from runtime.llm.simulated import SimulatedEngine


def build_engine(settings: Settings, model: str, index: int = 0) -> Engine:
    """The engine of replica ``index`` of ``model``."""
    if settings.engine == "vllm":
        from runtime.llm.vllm import VLLMEngine

        return VLLMEngine(model, settings.vllm, index)
    if settings.engine == "openai":
        from runtime.llm.openai import OpenAIEngine

        return OpenAIEngine(model, settings.openai)
    return SimulatedEngine(model, settings.simulated)


def engine_actor_options(settings: Settings) -> dict[str, Any]:
    """Ray options for an engine actor: GPUs (and a placement group for tensor parallelism) or CPUs."""
    if settings.engine != "vllm":
        return {"num_cpus": 0}
    cfg = settings.vllm
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    if cfg.tensor_parallel_size > 1:
        # vLLM's Ray executor places one worker per GPU in the bundles of the actor's placement group.
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundles = [{"CPU": cfg.num_cpus, "GPU": 1.0}] * cfg.tensor_parallel_size
        group = placement_group(bundles, strategy="STRICT_PACK")
        options["num_gpus"] = 0
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_capture_child_tasks=True)
    return options


def gate_key(settings: Settings, model: str) -> str:
    """The gate an engine's requests pass: ``openai:<remote model>`` or ``engine:<model>``."""
    if settings.engine == "openai":
        return f"openai:{settings.openai.remote_model or model}"
    return f"engine:{model}"


def estimate_tokens(request: ChatRequest) -> int:
    """What a request may cost before it runs: about 4 characters a token, plus its max_tokens."""
    return sum(len(m.content) for m in request.messages) // 4 + request.max_tokens


def _first_text_reaches(passage: Passage, on_text: Callable[[str], Awaitable[None]] | None
                        ) -> Callable[[str], Awaitable[None]]:
    async def reached_then(text: str) -> None:
        passage.reached()
        if on_text is not None:
            await on_text(text)

    return reached_then


def _timing_first_text(on_text: Callable[[str], Awaitable[None]], started: float,
                       model: str) -> Callable[[str], Awaitable[None]]:
    """``on_text`` that also records the time to the first text."""
    first = [True]

    async def timed(text: str) -> None:
        if first[0]:
            first[0] = False
            metrics.observe("raysquad_llm_ttft_seconds", time.monotonic() - started, model=model)
        await on_text(text)

    return timed


class EngineActor:
    def __init__(self, settings: Settings, model: str, gated: bool = False) -> None:
        self.replica = ray.get_runtime_context().get_actor_name() or model \
            if ray.is_initialized() else model
        self.engine = build_engine(settings, model, _replica_index(self.replica))
        # The gate keeper is found by name, not passed in: constructor arguments stay small values,
        # which Ray keeps with the actor's spec so that a restart can always use them again.
        self.gates = GateClient(GateKeeperHandle.find(settings.namespace) if gated else None)
        self.gate_key = gate_key(settings, model)
        if hasattr(self.engine, "on_throttled"):  # an upstream engine: its 429s throttle the gate
            self.engine.on_throttled = self._throttled
        self.in_flight = 0
        self.model = model

    def _throttled(self, retry_after_s: float | None) -> None:
        self.gates.throttled(self.gate_key, retry_after_s)

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        """Run a request through the model's gate; with ``stream_to``, its text goes to the task's
        events as it is generated."""
        self.in_flight += 1
        metrics.set_gauge("raysquad_llm_in_flight", self.in_flight, model=self.model,
                          replica=self.replica)
        started = time.monotonic()
        try:
            on_text, flush = stream_to.writer() if stream_to is not None else (None, None)
            if on_text is not None:  # streamed: the first text's time is the TTFT
                on_text = _timing_first_text(on_text, started, self.model)
            async with self.gates.passage(self.gate_key, request.tenant, request.priority,
                                          estimate_tokens(request)) as passage:
                if getattr(self.engine, "remote", False):  # the upstream has it at its first byte
                    on_text = _first_text_reaches(passage, on_text)
                else:  # an engine in this process has the request as soon as it is called
                    passage.reached()
                completion = await self.engine.chat(request, on_text)
                passage.tokens_used = completion.usage.prompt_tokens + completion.usage.completion_tokens
            metrics.inc("raysquad_llm_tokens", completion.usage.completion_tokens, model=self.model)
            if flush is not None:  # after the gate: the Store write is not the upstream's time
                await flush()
            return completion
        finally:
            self.in_flight -= 1
            metrics.set_gauge("raysquad_llm_in_flight", self.in_flight, model=self.model,
                              replica=self.replica)

    async def abort(self, request_id: str) -> bool:
        return await self.engine.abort(request_id)

    async def timeline(self) -> list[tuple[float, float]]:
        """(arrived, ended) of the engine's last requests, where the engine keeps them (simulated)."""
        return list(getattr(self.engine, "timeline", ()))

    async def load(self) -> int:
        return self.in_flight

    async def stats(self) -> dict[str, Any]:
        """What the engine has served, where it counts it (vLLM: ``EngineStats``); else {}."""
        stats = getattr(self.engine, "stats", None)
        return dict(stats()) if stats is not None else {}

    async def ready(self) -> bool:
        """Answers once the engine is built (a vLLM engine takes tens of seconds)."""
        return True


@dataclass(frozen=True)
class TokenSink:
    """Where generated text goes: ``tokens`` events on a task, sent every ``every_s`` seconds.
    With the run's ``lease``, a stale run's text is refused by the Store like its other writes."""

    store: Any
    task_id: str
    step: str
    every_s: float = 0.1
    lease: Lease | None = None

    def writer(self) -> tuple[Callable[[str], Awaitable[None]], Callable[[], Awaitable[None]]]:
        """``on_text`` (never waits for the Store) and ``flush`` (sends what is left, at the end)."""
        streams = TokenStreams.here(self.store, self.every_s)
        key = streams.open(self)

        async def on_text(text: str) -> None:
            streams.add(key, text)

        async def flush() -> None:
            await streams.close(key)

        return on_text, flush


class TokenStreams:
    """The text of every streamed request of this process (an engine replica serves many at once),
    sent to the Store every ``every_s`` as one ``append_events`` call: one Store call per engine
    replica per interval, not one per request. A request's last text goes on its own when it ends,
    so that its events are in the log before its step is recorded."""

    _here: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                              dict[Any, TokenStreams]]] = weakref.WeakKeyDictionary()

    def __init__(self, store: Any, every_s: float) -> None:
        self.store = store
        self.every_s = every_s
        self._sinks: dict[int, TokenSink] = {}
        self._pending: dict[int, list[str]] = {}
        self._sent: dict[int, int] = {}  # pieces sent per request: their ``n``
        self._keys = itertools.count()
        self._ticker: asyncio.Task[None] | None = None

    @classmethod
    def here(cls, store: Any, every_s: float) -> TokenStreams:
        """This event loop's streams to ``store``."""
        per_store = cls._here.setdefault(asyncio.get_running_loop(), {})
        which = (getattr(store, "namespace", None), getattr(store, "name", None)) \
            if getattr(store, "name", None) else id(store)
        streams = per_store.get(which)
        if streams is None:
            streams = per_store[which] = cls(store, every_s)
        return streams

    def open(self, sink: TokenSink) -> int:
        key = next(self._keys)
        self._sinks[key] = sink
        self._pending[key] = []
        self._sent[key] = 0
        return key

    def add(self, key: int, text: str) -> None:
        self._pending[key].append(text)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())

    async def close(self, key: int) -> None:
        text = self._pending.pop(key, [])
        try:
            if text:
                await self._send([(key, "".join(text))])
        finally:
            self._sinks.pop(key, None)
            self._sent.pop(key, None)

    async def _tick(self) -> None:
        while any(self._pending.values()):
            await asyncio.sleep(self.every_s)
            ready = [(key, "".join(parts)) for key, parts in self._pending.items() if parts]
            for key, _ in ready:
                self._pending[key] = []
            if ready:
                await self._send(ready)

    async def _send(self, pieces: list[tuple[int, str]]) -> None:
        events = []
        for key, text in pieces:
            sink = self._sinks[key]
            self._sent[key] += 1
            events.append((sink.task_id, "tokens",
                           {"step": sink.step, "n": self._sent[key], "text": text}, sink.lease))
        try:
            await self.store.append_events(events)  # a refused one (a stale run) is just dropped
        except RaysquadError:  # a Store restart: generated text is not a step; it is not resent
            pass


class EngineService(Protocol):
    """What routers call on one engine replica."""

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion: ...
    async def abort(self, request_id: str) -> bool: ...


class EngineHandle(ActorHandle):
    """One engine actor, typed. It restarts (rebuilding its engine); a request in flight when it died
    is not sent again here: the step that made it retries under its own policy."""

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        return await self.via(EngineActor.chat, idempotent=False)(request, stream_to)

    async def abort(self, request_id: str) -> bool:
        return await self.via(EngineActor.abort, deadline_s=5.0)(request_id)

    async def ready(self) -> bool:
        return await self.via(EngineActor.ready)()

    async def load(self, deadline_s: float | None = None) -> int:
        return await self.via(EngineActor.load, deadline_s=deadline_s)()

    async def timeline(self) -> list[tuple[float, float]]:
        return await self.via(EngineActor.timeline)()

    async def stats(self) -> dict[str, Any]:
        return await self.via(EngineActor.stats)()


class Router:
    """Sends a request to one engine actor of its model: by affinity to its conversation, or the
    least loaded (as this router has seen them): ``runtime.llm.routing``.

    With ``discover`` (engines that autoscale), it looks the replicas up again every ``refresh_s``
    seconds, and at once when a replica it picked is gone."""

    def __init__(self, replicas: Mapping[str, Sequence[EngineService]],
                 discover: Callable[[], Mapping[str, Sequence[EngineService]]] | None = None,
                 refresh_s: float = 2.0, policy: RoutingPolicy = RoutingPolicy()) -> None:
        self.replicas = replicas
        self._load: dict[tuple[str, int], int] = {}
        self._discover = discover
        self._refresh_s = refresh_s
        self._refreshed = time.monotonic()
        self.picker = Picker(policy)

    @classmethod
    def for_settings(cls, settings: Settings, replicas: Mapping[str, Sequence[EngineService]],
                     discover: Callable[[], Mapping[str, Sequence[EngineService]]] | None = None
                     ) -> Router:
        return cls(replicas, discover, policy=RoutingPolicy(
            settings.engine_routing, settings.engine_affinity_slack, settings.engine_affinity_sessions))

    def _refresh(self, force: bool = False) -> None:
        if self._discover is None:
            return
        if force or time.monotonic() - self._refreshed >= self._refresh_s:
            found = self._discover()
            if _names(found) != _names(self.replicas):
                self._load.clear()  # indexes may now name other replicas
            self.replicas = found
            self._refreshed = time.monotonic()

    async def chat(self, request: ChatRequest, stream_to: TokenSink | None = None) -> Completion:
        self._refresh()
        try:
            return await self._chat(request, stream_to)
        except ActorUnavailable:
            if self._discover is None:
                raise
            # A replica the pool stopped since we last looked: look again, try one other once.
            self._refresh(force=True)
            return await self._chat(request, stream_to)

    async def _chat(self, request: ChatRequest, stream_to: TokenSink | None) -> Completion:
        handles = self.replicas.get(request.model)
        if not handles:
            raise ModelNotFound(request.model, tuple(self.replicas))
        loads = [self._load.get((request.model, i), 0) for i in range(len(handles))]
        pick, why = self.picker.pick(request, _replica_names(handles), loads)
        metrics.inc("raysquad_llm_routed", model=request.model, how=why.value)
        key = (request.model, pick)
        self._load[key] = loads[pick] + 1
        try:
            result = await handles[pick].chat(request, stream_to)
        finally:
            if key in self._load:  # not cleared by a refresh meanwhile
                self._load[key] -= 1
        return result

    async def abort(self, model: str, request_id: str) -> None:
        """Abort a request on every replica of the model (it runs on one of them)."""
        for handle in self.replicas.get(model, []):
            try:
                await handle.abort(request_id)
            except RaysquadError:
                pass  # a replica that is down runs nothing to abort


def _replica_index(name: str) -> int:
    """The index in an engine actor's name (``engine:<model>:<i>``); 0 for any other name."""
    if not name.startswith(names.ENGINE_PREFIX):
        return 0
    index = names.engine_of(name)[1]
    return int(index) if index.isdecimal() else 0


def _replica_names(handles: Sequence[Any]) -> list[str]:
    """Names that rank a model's replicas the same in every process: their actor names
    (``engine:<model>:<i>``), else their places in the list."""
    return [getattr(h, "name", None) or f"#{i}" for i, h in enumerate(handles)]


def _names(replicas: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Which replicas, by name (or identity): what the loads a router counts are indexed by."""
    return {model: [getattr(h, "name", None) or id(h) for h in hs] for model, hs in replicas.items()}


def find_engines(namespace: str) -> dict[str, list[EngineHandle]]:
    """The engine actors registered in ``namespace``, by model, in index order."""
    found: dict[str, list[tuple[int, EngineHandle]]] = {}
    for name in actor_names(namespace, names.ENGINE_PREFIX):
        model, index = names.engine_of(name)
        try:
            found.setdefault(model, []).append((int(index), EngineHandle.named(name, namespace)))
        except ValueError:  # gone since it was listed
            continue
    return {model: [h for _, h in sorted(pairs, key=lambda p: p[0])]
            for model, pairs in found.items()}
