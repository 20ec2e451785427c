"""One model call, beyond its request: the LLM memo, retries on each model, fallback models, and
the dead letter of a call that ran out of all of them.

``call_model`` is what a workflow's run (``ctx.llm.chat``) and an agent's handling
(``AgentContext.chat``) do with each request, around their own way of reaching an engine:

1. **The memo.** With ``ModelPlan.cache`` (only ever for a temperature-0 request), the request's
   ``memo_key`` (a hash of its tenant, model, messages, tools, tool choice, response format,
   max_tokens and temperature, as canonical JSON) is looked up in the Store (store/memo.py); an
   answer kept there is the call's answer, marked ``cached``, and no engine runs. A miss goes on,
   and its answer is kept (under the key of the model that answered).
2. **Retries, then the next model.** The request is tried on its model under ``ModelPlan.retry``
   (each attempt under ``timeout_s``); when those run out (or the error is one no retry mends),
   the same request goes to the next of ``fallback_models``, with the same retries. Each
   hand-over is an ``llm.fallback`` event of the task; the answer's ``model`` says which answered.
3. **The dead letter.** A call that ran out of every model is kept as a dead letter (tool
   ``llm:<model>``, its request and its models as arguments) and raises ``ModelFailed`` naming it;
   ``runtime.client.ops`` replays it, on another model if asked.

The plan itself and the memo's key are ``runtime.core.calls``'s (workflows and agents build plans).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from runtime.core import metrics
from runtime.core.calls import ModelPlan, memo_key
from runtime.core.errors import LeaseLost, ModelFailed, TaskCancelled
from runtime.core.models import ChatRequest, Completion, DeadLetter
from runtime.core.retry import GaveUp, retry

if TYPE_CHECKING:
    from runtime.store.service import StoreService

log = logging.getLogger(__name__)

#: A model call's dead letter is named ``llm:<model>`` (its first model) where a tool's is the
#: tool's name: no tool's name holds a colon, so the two never meet.
LETTER_PREFIX = "llm:"
#: What is not the model's failure: it ends the call as it is (no retry, no fallback, no letter).
PASSTHROUGH: tuple[type[BaseException], ...] = (TaskCancelled, LeaseLost)

Chat = Callable[[ChatRequest], Awaitable[Completion]]
Emit = Callable[[str, dict[str, Any]], None]


async def call_model(request: ChatRequest, plan: ModelPlan, chat: Chat, store: StoreService, *,
                     task_id: str = "", step_key: str = "", emit: Emit | None = None) -> Completion:
    """Answer ``request`` as ``plan`` says (see the module's doc): from the memo, else through
    ``chat`` on its model and then on each fallback; ModelFailed (after keeping its dead letter,
    where the plan asks) when every model ran out (a call with one model and no letter fails with
    that model's own error). ``task_id`` and ``step_key`` name the call
    (its events, its dead letter); ``emit`` tells the task of a memo hit and of each fallback."""
    key = memo_key(request) if plan.cache else None
    if key is not None:
        kept = await store.memo_get(request.tenant, key)
        if kept is not None:
            metrics.inc("raysquad_llm_cache_hits", model=request.model)
            if emit is not None:
                emit("llm.cached", {"step": step_key, "model": kept.model})
            return kept.model_copy(update={"cached": True})
        metrics.inc("raysquad_llm_cache_misses", model=request.model)
    models = plan.models(request.model)
    failures: list[tuple[str, GaveUp]] = []
    for i, model in enumerate(models):
        asked = request if model == request.model else request.model_copy(update={"model": model})
        try:
            completion = await retry(functools.partial(chat, asked), plan.retry,
                                     name=step_key or f"llm:{model}", timeout_s=plan.timeout_s,
                                     on_retry=plan.on_retry, passthrough=PASSTHROUGH)
        except GaveUp as e:
            failures.append((model, e))
            if i + 1 < len(models):
                metrics.inc("raysquad_llm_fallbacks", model=model)
                log.info("task %s step %s: model %s failed (%s); trying %s", task_id, step_key,
                         model, type(e.error).__name__, models[i + 1])
                if emit is not None:
                    emit("llm.fallback", {"step": step_key, "model": model, "next": models[i + 1],
                                          "attempts": e.attempts,
                                          "error": f"{type(e.error).__name__}: {e.error}"})
            continue
        if key is not None:
            await store.memo_put(request.tenant, key if asked is request else memo_key(asked),
                                 completion)
        return completion
    last = failures[-1][1].error
    if len(models) == 1 and not plan.dead_letter:
        raise last  # nothing beyond one model's tries: the call fails as that model did
    letter = await _dead_letter(store, request, models, failures, task_id, step_key) \
        if plan.dead_letter else ""
    raise ModelFailed(models, "; ".join(f"{m}: {type(e.error).__name__}: {e.error}"
                                        for m, e in failures),
                      type(last).__name__, sum(e.attempts for _, e in failures), letter)


async def _dead_letter(store: StoreService, request: ChatRequest, models: tuple[str, ...],
                       failures: list[tuple[str, GaveUp]], task_id: str, step_key: str) -> str:
    """Keep the call as a dead letter (its request whole, as a tool's arguments are: a replay
    sends what the call sent); its id, or "" if it could not be kept."""
    last = failures[-1][1].error
    letter = DeadLetter(
        id=uuid.uuid4().hex, tool=f"{LETTER_PREFIX}{request.model}",
        args={"request": request.model_dump(mode="json"), "models": list(models)},
        error=f"{type(last).__name__}: {last}", error_type=type(last).__name__,
        attempts=sum(e.attempts for _, e in failures), task_id=task_id or None,
        step_key=step_key or None, tenant=request.tenant, created_at=time.time())
    try:
        await store.add_dead_letter(letter)
    except Exception:  # noqa: BLE001 - the caller still gets its error
        log.exception("task %s step %s: could not keep the model call's dead letter", task_id,
                      step_key)
        return ""
    metrics.inc("raysquad_dead_letters", tool=letter.tool)
    log.warning("task %s step %s: model call failed on %s; dead letter %s", task_id, step_key,
                ", ".join(models), letter.id)
    return letter.id


def is_model_letter(letter: DeadLetter) -> bool:
    """Whether a dead letter is a model call's (``call_model`` kept it)."""
    return letter.tool.startswith(LETTER_PREFIX) and "request" in letter.args


async def answer_again(letter: DeadLetter, model: str | None,
                       chat: Chat) -> tuple[Completion | None, str, int]:
    """A model call's dead letter run again: on ``model`` alone if given, else on the models it
    had, in order, one attempt each. (its answer or None, what failed, attempts made)."""
    request = ChatRequest.model_validate(letter.args["request"])
    models = [model] if model else list(letter.args.get("models") or [request.model])
    failed: list[str] = []
    for m in models:
        try:
            return await chat(request.model_copy(update={"model": m})), "", len(failed) + 1
        except Exception as e:  # noqa: BLE001 - the next model, or the letter stays dead
            failed.append(f"{m}: {type(e).__name__}: {e}")
    return None, "; ".join(failed), len(failed)
