"""What a task's model calls cost: each completion's tokens added to the task's usage, and the
task's token budget enforced (``TokenBudgetExceeded``, which fails the task)."""

from __future__ import annotations

from runtime.core import metrics
from runtime.core.errors import TokenBudgetExceeded
from runtime.core.models import Completion, Lease
from runtime.store.service import StoreService


async def charge(store: StoreService, lease: Lease, completion: Completion,
                 default_budget: int | None) -> None:
    """Add the completion's tokens to its task (fenced by the run's lease); past the task's budget
    (its own, else ``default_budget``), raise TokenBudgetExceeded."""
    usage = completion.usage
    metrics.inc("raysquad_task_tokens", usage.prompt_tokens, model=completion.model, kind="prompt")
    metrics.inc("raysquad_task_tokens", usage.completion_tokens, model=completion.model,
                kind="completion")
    used, budget = await store.add_usage(lease, completion.model, usage.prompt_tokens,
                                         usage.completion_tokens)
    limit = budget or default_budget
    if limit is not None and used > limit:
        raise TokenBudgetExceeded(lease.task_id, used, limit)
