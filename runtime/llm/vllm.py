"""The vLLM engine: vLLM's async engine in-process (inside an engine actor), streaming, abort, priority.

Two concurrency limits apply: vLLM's own ``max_num_seqs`` (sequences batched at once), and an
admission limit per actor, ``max_inflight``: requests beyond it wait here (``admission.Admission``),
highest priority first with aging (so a low priority is not starved) and, within that, the tasks
that have had the least engine time first, instead of piling into the engine. The task's priority
reaches vLLM's priority scheduler (vLLM runs lower numbers first, so it gets ``-priority``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.core import metrics
from runtime.core.config import VLLMEngineConfig
from runtime.core.errors import EngineError
from runtime.core.models import ChatRequest, Completion, Usage
from runtime.llm.admission import Admission
from runtime.llm.constrained import answer_schema, constrained_completion, prompt_messages

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """What one engine has served since it started: vLLM's own prefix-cache counters (prompt
    tokens looked up, and found cached), and per request the time to its first token (from the
    engine's call, admission wait included; ``request_ids`` names them, in the same order) and its
    token counts."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefix_queried: int = 0
    prefix_hits: int = 0
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))
    request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "prefix_queried": self.prefix_queried, "prefix_hits": self.prefix_hits,
                "ttft_s": list(self.ttft_s), "request_ids": list(self.request_ids)}


TTFT_SAMPLES = 10_000  # the last requests' times to first token that an engine keeps


def engine_args(model: str, config: VLLMEngineConfig) -> Any:
    """vLLM's engine arguments for ``config`` (also what the benchmarks' direct baselines use)."""
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(config.model_path), served_model_name=[model], dtype=config.dtype,
        max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager, scheduling_policy="priority",
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enable_prefix_caching=config.prefix_caching,
    )


class VLLMEngine:
    def __init__(self, model: str, config: VLLMEngineConfig, index: int = 0) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kvcache_gib))
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if config.cpu_threads_bind:  # several replicas on one machine's cores: each its own
            bind = config.cpu_threads_bind[index % len(config.cpu_threads_bind)]
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        from vllm.engine.async_llm_engine import AsyncLLMEngine

        self.model = model
        self.config = config
        self.counters = EngineStats()
        self._engine = AsyncLLMEngine.from_engine_args(
            engine_args(model, config), stat_loggers=[_prefix_cache_logger(self.counters, model)])
        self._tokenizer = self._engine.get_tokenizer()
        self.admission = Admission(config.max_inflight, config.admission_aging_per_s,
                                   config.admission_service_weight)

    def _prompt(self, request: ChatRequest) -> str:
        return str(self._tokenizer.apply_chat_template(
            prompt_messages(request), tokenize=False, add_generation_prompt=True))

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        shown = answer_schema(request) is None  # a constrained answer is JSON: shown once parsed
        async for delta, _ in self._generate(request):
            if delta and shown:
                yield delta

    async def _generate(self, request: ChatRequest) -> AsyncIterator[tuple[str, Any]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        schema = answer_schema(request)
        structured = {} if schema is None else {"structured_outputs": _structured(schema)}
        params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                                output_kind=RequestOutputKind.DELTA, **structured)
        request_id = request.request_id or os.urandom(8).hex()
        started = time.monotonic()
        first = True
        async with self.admission.slot(request.priority, request.request_id):
            try:
                async for out in self._engine.generate(self._prompt(request), params, request_id,
                                                       priority=-request.priority):
                    if first and out.outputs[0].token_ids:
                        first = False
                        self.counters.ttft_s.append(time.monotonic() - started)
                        self.counters.request_ids.append(request_id)
                    if out.finished:
                        self.counters.requests += 1
                        self.counters.prompt_tokens += len(out.prompt_token_ids or ())
                    yield out.outputs[0].text, out
            except asyncio.CancelledError:
                await self._engine.abort(request_id)
                raise
            except Exception as e:  # noqa: BLE001 - vLLM's errors do not cross actor boundaries
                raise EngineError(self.model, f"{type(e).__name__}: {e}") from None

    async def chat(self, request: ChatRequest,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> Completion:
        pieces: list[str] = []
        prompt_tokens = completion_tokens = 0
        finish: Literal["stop", "length", "abort"] = "stop"
        shown = answer_schema(request) is None
        async for delta, out in self._generate(request):
            if delta:
                pieces.append(delta)
                if on_text is not None and shown:
                    await on_text(delta)
            completion_tokens += len(out.outputs[0].token_ids)
            prompt_tokens = len(out.prompt_token_ids or ()) or prompt_tokens
            if out.finished:
                reason = out.outputs[0].finish_reason
                finish = "length" if reason == "length" else "abort" if reason == "abort" else "stop"
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.counters.completion_tokens += completion_tokens
        if shown or finish != "stop":
            return Completion(model=self.model, text="".join(pieces), finish_reason=finish,
                              usage=usage)
        return constrained_completion(request, self.model, "".join(pieces), usage)

    async def abort(self, request_id: str) -> bool:
        await self._engine.abort(request_id)
        return True

    async def health(self) -> bool:
        await self._engine.check_health()
        return True

    def stats(self) -> dict[str, Any]:
        """What this engine has served (``EngineStats``)."""
        return self.counters.as_dict()


def _prefix_cache_logger(counters: EngineStats, model: str) -> Callable[[Any, int], Any]:
    """A vLLM stat logger (the interface its Prometheus and log loggers implement) that adds each
    step's prefix-cache counters to ``counters`` and to ``raysquad_llm_prefix_cache_tokens``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PrefixCacheCounter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            cache = getattr(scheduler_stats, "prefix_cache_stats", None)
            if cache is None or not cache.queries:
                return
            counters.prefix_queried += cache.queries
            counters.prefix_hits += cache.hits
            metrics.inc("raysquad_llm_prefix_cache_tokens", cache.queries, model=model,
                        outcome="queried")
            metrics.inc("raysquad_llm_prefix_cache_tokens", cache.hits, model=model, outcome="hit")

        def log_engine_initialized(self) -> None:
            pass

    return PrefixCacheCounter


def _structured(schema: dict[str, Any]) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=schema)
