"""The base of every typed actor handle: the one place where a call crosses to a Ray actor.

Each actor of the runtime has a handle class in the module that owns the actor (``StoreHandle`` in
``store/actor.py``, ``DispatcherHandle`` in ``dispatch.py``, ...). A handle names its actor, sets its
Ray options when it creates it, and offers typed async methods; the code around it takes the handle's
Protocol, so unit tests pass an in-process object instead (usually the actor class itself).

What every handle gets from ``ActorHandle``:

- **Restarts are not errors.** A call that is safe to repeat (``idempotent=True``, the default) is
  sent again when its actor dies or is restarting, with backoff, until ``deadline_s``; only then does
  the caller see ``ActorUnavailable`` (a retryable error; the HTTP API answers 503). A call that is not
  safe to repeat gets ``ActorUnavailable`` at once.
- **Found again by name.** A named actor that was replaced (killed and created anew under its name)
  is looked up again, so a long-lived handle follows it.
- **Our errors, not Ray's wrapper.** An error of ours raised in the actor reaches the caller as itself.
- **Hosted or not, the same.** A service that lives inside the control host (``names.host_of``) is
  named like an actor; its handle holds the host's Ray handle and sends each call through the host's
  ``call(service, method, ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

import ray
from ray.experimental import internal_kv

from runtime.actors import names
from runtime.core import metrics
from runtime.core.errors import ActorUnavailable, RaysquadError

log = logging.getLogger(__name__)
H = TypeVar("H", bound="ActorHandle")
P = ParamSpec("P")
R = TypeVar("R")

KV_NAMESPACE = "raysquad"
#: How long a repeatable call keeps trying while its actor restarts (a restart takes 1 to 5 s here).
DEFAULT_DEADLINE_S = 60.0
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0


class ActorHandle:
    """A Ray actor handle with retries across restarts; subclasses add the typed methods."""

    def __init__(self, actor: Any, name: str | None = None, namespace: str | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self._actor = actor
        self.name = name
        self.namespace = namespace
        self.deadline_s = deadline_s
        self._host = names.host_of(name) if name else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name or self._actor!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._actor, self.name, self.namespace, self.deadline_s))

    @classmethod
    def named(cls: type[H], name: str, namespace: str) -> H:
        """A handle on the actor (or hosted service) registered under ``name``; ValueError if its
        process is not."""
        return cls(ray.get_actor(names.host_of(name) or name, namespace=namespace), name, namespace)

    @property
    def actor(self) -> Any:
        """The Ray actor handle (for ``ray.kill`` and the like; calls go through the methods)."""
        return self._actor

    async def _call(self, method: str, *args: Any, idempotent: bool = True,
                    deadline_s: float | None = None, **kwargs: Any) -> Any:
        limit = self.deadline_s if deadline_s is None else deadline_s
        started = time.monotonic()
        backoff = _FIRST_BACKOFF_S
        kind = (self.name or "actor").partition(":")[0]  # worker:<id> counts as worker
        while True:
            metrics.inc("raysquad_actor_calls", actor=kind, method=method)
            try:
                return await self._remote(method, *args, **kwargs)
            except ray.exceptions.RayTaskError as e:
                raise ours(e) from None
            except ray.exceptions.RayActorError as e:
                waited = time.monotonic() - started
                if not idempotent or waited + backoff > limit:
                    raise ActorUnavailable(self.name or method, waited) from e
                log.debug("%s.%s: actor unavailable (%s); trying again", self.name, method,
                          type(e).__name__)
                await asyncio.sleep(backoff * (1 + random.random()) / 2 + backoff / 2)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                self._find_again(e)

    @overload
    def via(self, method: Callable[Concatenate[Any, P], Awaitable[R]], *, idempotent: bool = True,
            deadline_s: float | None = None) -> Callable[P, Awaitable[R]]: ...

    @overload
    def via(self, method: Callable[Concatenate[Any, P], R], *, idempotent: bool = True,
            deadline_s: float | None = None) -> Callable[P, Awaitable[R]]: ...

    def via(self, method: Callable[Concatenate[Any, P], Any], *, idempotent: bool = True,
            deadline_s: float | None = None) -> Callable[P, Awaitable[Any]]:
        """``method`` of the actor's class, called on the actor: typed by the method's own signature
        (``await handle.via(Dispatcher.get_tasks)(owner, 10, 1.0)``), with ``_call``'s retries."""
        name = method.__name__

        async def call(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await self._call(name, *args, idempotent=idempotent, deadline_s=deadline_s,
                                    **kwargs)
        return call

    def _remote(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Send one call (to the host's ``call`` for a hosted service); its ObjectRef."""
        if self._host is not None:
            return self._actor.call.remote(self.name, method, *args, **kwargs)
        return getattr(self._actor, method).remote(*args, **kwargs)

    async def alive(self, deadline_s: float) -> bool:
        """True if the actor answers within ``deadline_s`` (False while it is down or restarting)."""
        try:
            await asyncio.wait_for(self._call("__ray_ready__", deadline_s=deadline_s), deadline_s)
            return True
        except (TimeoutError, ActorUnavailable):
            return False

    async def health(self, deadline_s: float) -> str:
        """``ok``, or why the actor cannot do its work: down or restarting, or, for an actor with a
        ``health`` method of its own, what that says (a restarted actor still rebuilding, say)."""
        if self._host is None and not hasattr(self._actor, "health"):
            return "ok" if await self.alive(deadline_s) else "down (restarting or unreachable)"
        try:
            return str(await asyncio.wait_for(self._call("health", deadline_s=deadline_s),
                                              deadline_s))
        except (TimeoutError, ActorUnavailable):
            return "down (restarting or unreachable)"

    async def kill(self) -> None:
        """End the actor's process now, for good (no restart); not for a hosted service."""
        if self._host is not None:
            raise TypeError(f"{self.name} lives in the {self._host} host: stop the runtime instead")
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is what we wanted
            pass

    def _send(self, method: str, *args: Any) -> None:
        """Fire and forget: for notifications whose loss costs nothing (a later call makes up)."""
        metrics.inc("raysquad_actor_calls", actor=(self.name or "actor").partition(":")[0],
                    method=method)
        self._remote(method, *args)

    def _find_again(self, error: BaseException) -> None:
        """After a permanent death, take the actor now registered under our name, if any."""
        if self.name is None or not isinstance(error, ray.exceptions.ActorDiedError):
            return
        try:
            self._actor = ray.get_actor(self._host or self.name, namespace=self.namespace)
        except ValueError:
            pass


def ours(e: ray.exceptions.RayTaskError) -> BaseException:
    """Our own error, if a remote call raised one; else Ray's wrapper as it came."""
    return e.cause if isinstance(e.cause, RaysquadError) else e


def actor_names(namespace: str, prefix: str = "") -> list[str]:
    """The names of the actors registered in ``namespace``, and of the services its control host
    holds (``hosted_names``), that start with ``prefix``, sorted."""
    found = process_names(namespace)
    if names.CONTROL in found:
        found += hosted_names(namespace)
    return sorted(n for n in found if n.startswith(prefix))


def process_names(namespace: str, prefix: str = "") -> list[str]:
    """The names of the Ray actors (each a process) registered in ``namespace`` that start with
    ``prefix``, sorted: hosted services are not among them."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == namespace and a["name"].startswith(prefix))


def _hosted_key(namespace: str) -> str:
    return f"hosted:{namespace}"


def hosted_names(namespace: str) -> list[str]:
    """The services the control host of ``namespace`` holds, as it last wrote them down (in Ray's
    key-value store, where every process can read them without asking the host)."""
    raw = internal_kv._internal_kv_get(_hosted_key(namespace), namespace=KV_NAMESPACE)
    return raw.decode().split("\n") if raw else []


def write_hosted_names(namespace: str, hosted: list[str]) -> None:
    internal_kv._internal_kv_put(_hosted_key(namespace), "\n".join(hosted), namespace=KV_NAMESPACE)


def forget_hosted_names(namespace: str) -> None:
    internal_kv._internal_kv_del(_hosted_key(namespace), namespace=KV_NAMESPACE)


def restarted() -> bool:
    """True inside an actor that Ray has restarted after it died (its constructor runs again)."""
    if not ray.is_initialized():  # in-process use (a unit test); asking would start Ray
        return False
    context = ray.get_runtime_context()
    return bool(context.get_actor_id()) and bool(context.was_current_actor_reconstructed)
