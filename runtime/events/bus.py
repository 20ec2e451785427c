"""The event bus: it routes each published event to its subscribers and delivers it, at least once.
The same actor (``events``) runs the scheduler (runtime/events/schedules.py).

Publishing only writes the event to the Store (the outbox, store/outbox.py) and pokes the bus. The
bus, one restartable actor named ``events``, then works from the Store alone, so a kill at any
point loses nothing: it routes each new event (the workflows whose ``on_event`` triggers match and
the agent roles whose ``subscribes`` patterns match get a delivery each, a debounced one due
later), then takes the deliveries that are due and carries them out:

- to a workflow, it submits one task with the event's data as input and the idempotency key
  ``event:<event id>:<workflow>``, so a redelivered event starts nothing new; flow control per key
  (``one_per_key``, ``cancel_running``) is decided here, against the tasks earlier deliveries for
  the key started. A key is the event's tenant's: two tenants' events with one key never meet,
  and a tenant's keyless events all share one key of that tenant (debounced together, one at a
  time). The task gets the tenant's lowest allowed priority. A refusal for what the task is
  (Refused, NotFound) ends the delivery; anything passing (the Store restarting, a database
  error, a full queue) leaves it due, its attempt not counted;
- to an agent role, it puts a message in the role's mailbox; the replica that handles it finishes
  the delivery. A replica that dies, or a handler that raises, leaves it to come due again after
  ``event_retry_s``, as a redelivery (``msg.redelivered``), up to ``event_max_attempts``. While
  its message still waits in the mailbox or a handler runs it, the delivery is only put off (no
  copy, no attempt counted); so is a full mailbox;
- to an outbound webhook, it sends it in a task of its own (runtime/events/webhooks.py), so a slow
  receiver holds neither routing nor any other delivery.

Events past ``event_retention_s`` whose deliveries have all ended are forgotten, a batch at a time
between rounds; each tenant may keep ``tenant_events`` events (``tenant_event_bytes`` of data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal, Protocol

from runtime.actors import names
from runtime.actors.handles import ActorHandle, restarted
from runtime.authoring.catalog import Catalog
from runtime.core import metrics
from runtime.core.config import Settings, WebhookTarget
from runtime.core.errors import (
    InputTooLarge,
    InvalidEventData,
    InvalidInput,
    InvalidTopic,
    InvalidTransition,
    NotFound,
    QueueFull,
    RaysquadError,
    Refused,
    TaskNotFound,
)
from runtime.core.models import (
    AgentMessage,
    DeadLetter,
    Delivery,
    Route,
    SubmitRequest,
    TopicEvent,
    check_name,
)
from runtime.core.recovery import OK, Rebuild, Rounds, loops_health
from runtime.core.triggers import check_topic, topic_matches
from runtime.events import webhooks
from runtime.events.schedules import Scheduler
from runtime.flow.queue import MailboxService
from runtime.store.service import StoreService

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

ACTOR_NAME = names.EVENTS
BATCH = 100
ONE_PER_KEY_RECHECK_S = 0.5  # an event held by one_per_key looks again this often
TRANSIENT_RETRY_S = 5.0  # a delivery that met a passing error (the Store restarting) goes again
PRUNE_EVERY_S = 60.0  # how often the bus forgets events past their retention
PRUNE_BATCH = 500  # events forgotten in one transaction
MAX_SENDING = 256  # outbound webhooks in flight at once; more wait for their turn
#: Topics only the runtime publishes on (a task's end is ``task.<status>``).
RESERVED_TOPICS = ("task", "sys")


def routes(event: TopicEvent, catalog: Catalog, now: float,
           outbound: dict[str, WebhookTarget] | None = None) -> list[Route]:
    """The subscribers of ``event``: each workflow with a matching trigger (its first), each agent
    role with a matching pattern, each outbound webhook with a matching pattern (and tenant)."""
    out = []
    key = event.key or ""
    for wf in catalog.workflows.values():
        for trigger in wf.triggers:
            try:
                matched = trigger.matches(event.topic, event.data)
            except Exception:  # noqa: BLE001 - a filter that raises matches nothing
                log.warning("workflow %s: its where= filter raised on event %s", wf.name, event.id,
                            exc_info=True)
                matched = False
            if matched:
                debounce = trigger.debounce_s
                out.append(Route(f"workflow:{wf.name}", key, now + (debounce or 0.0),
                                 supersede=debounce is not None))
                break
    for role, agent_cls in catalog.agents.items():
        if any(topic_matches(pattern, event.topic) for pattern in agent_cls.subscribes):
            out.append(Route(f"agent:{role}", key, now))
    for name, target in (outbound or {}).items():
        if target.tenant in ("*", event.tenant) and any(
                topic_matches(pattern, event.topic) for pattern in target.topics):
            out.append(Route(f"webhook:{name}", key, now))
    return out


def wants(topic: str, catalog: Catalog, outbound: dict[str, WebhookTarget]) -> bool:
    """Whether anything subscribes to ``topic``, for some tenant (a task's end is published only
    then; routing decides whose webhook targets get it)."""
    patterns = [*(t.topic for wf in catalog.workflows.values() for t in wf.triggers),
                *(p for agent_cls in catalog.agents.values() for p in agent_cls.subscribes),
                *(p for target in outbound.values() for p in target.topics)]
    return any(topic_matches(pattern, topic) for pattern in patterns)


class EventBus:
    """Routes and delivers topic events; every bit of its state is in the Store."""

    def __init__(self, settings: Settings, store: StoreService, catalog: Catalog,
                 mailboxes: dict[str, MailboxService]) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.mailboxes = mailboxes
        self._wake = asyncio.Event()
        self._due_hints: list[float] = []
        self._loops: list[asyncio.Task[None]] = []
        self.scheduler = Scheduler(settings, store, catalog)
        self._http: httpx.AsyncClient | None = None  # outbound webhooks, through the address guard
        self._sending: dict[tuple[int, str], asyncio.Task[None]] = {}  # webhooks in flight
        self._pruned_at = 0.0
        self.routed = 0
        self.delivered = 0
        self._rounds = Rounds("routing and delivering events")
        self._rebuild: Rebuild | None = None
        if restarted():  # tried until the Store answers (a database outage outlasts a restart)
            self._rebuild = Rebuild("restarting the event bus", self.start)
            self._rebuild.start()

    async def start(self) -> None:
        """Declare the app's schedules, then route and deliver events and fire schedules."""
        if not self._loops or all(loop.done() for loop in self._loops):
            await self.scheduler.declare()
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(self._run()), loop.create_task(self.scheduler.run())]

    async def health(self) -> str:
        """``ok`` while it routes, delivers and fires schedules; else what it waits for."""
        if self._rebuild is not None and (rebuilding := self._rebuild.health()) != OK:
            return rebuilding
        loops = dict(zip(("event router", "scheduler"), self._loops, strict=False))
        stopped = loops_health({"event router": loops.get("event router"),
                                "scheduler": loops.get("scheduler")})
        return stopped if stopped != OK else self._rounds.health()

    async def poke(self) -> None:
        """Something was published: look now rather than at the next poll."""
        self._wake.set()

    async def schedules_changed(self) -> None:
        """A schedule was created, changed or resumed: the scheduler looks now."""
        self.scheduler.wake()

    async def stats(self) -> dict[str, int]:
        return {"routed": self.routed, "delivered": self.delivered, "fired": self.scheduler.fired}

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.tick()
                busy = await self._prune() or busy
                self._rounds.succeeded()
            except Exception as e:  # noqa: BLE001 - the Store may be restarting: try again next round
                log.warning("event bus round failed; trying again", exc_info=True)
                self._rounds.failed(e)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_wait())

    async def _prune(self) -> bool:
        """Forget a batch of events past their retention (at most every ``PRUNE_EVERY_S``, unless
        the last batch was full); True if there may be more."""
        now = time.time()
        if now - self._pruned_at < min(PRUNE_EVERY_S, self.settings.event_retention_s / 2):
            return False
        pruned = await self.store.prune_events(now - self.settings.event_retention_s, PRUNE_BATCH)
        self._pruned_at = 0.0 if pruned == PRUNE_BATCH else now
        return pruned == PRUNE_BATCH

    def _hint(self, due_at: float) -> None:
        """A delivery comes due at ``due_at``: look then (rather than only after ``event_idle_s``)."""
        self._due_hints.append(due_at)

    def _idle_wait(self) -> float:
        """How long to sleep: until the earliest due time this bus knows of, at least
        ``event_poll_s``, at most ``event_idle_s`` (a publish pokes it awake anyway; what another
        incarnation of the bus left due is found by then)."""
        now = time.time()
        self._due_hints = [t for t in self._due_hints if t > now - self.settings.event_poll_s]
        wait = self.settings.event_idle_s
        if self._due_hints:
            wait = min(wait, min(self._due_hints) - now)
        return max(self.settings.event_poll_s, wait)

    async def tick(self) -> bool:
        """Route what is new, deliver what is due; True if there may be more right away."""
        events = await self.store.unrouted_events(BATCH)
        now = time.time()
        routed = [(e, routes(e, self.catalog, now, self.settings.webhooks_out)) for e in events]
        for _, event_routes in routed:
            for route in event_routes:
                self._hint(route.due_at)
        await asyncio.gather(*(  # side by side: their Store calls overlap (and batch, on SQLite)
            self.store.route_event(e.seq, event_routes) for e, event_routes in routed))
        self.routed += len(events)
        due = await self.store.take_deliveries(BATCH, self.settings.event_retry_s)
        if due:  # each comes back then unless it is finished first
            self._hint(time.time() + self.settings.event_retry_s)
        # Deliveries under flow control go one at a time per target and key, in order (each looks
        # at what the one before started); all others go side by side.
        lanes: dict[tuple[str, ...], list[Delivery]] = defaultdict(list)
        for n, delivery in enumerate(due):
            event = delivery.event
            lane = (delivery.target, event.tenant, event.key or "") if self._flow_controlled(
                delivery) else (str(n),)
            lanes[lane].append(delivery)
        await asyncio.gather(*(self._lane(lane) for lane in lanes.values()))
        self.delivered += len(due)
        return len(events) == BATCH or len(due) == BATCH

    def _flow_controlled(self, delivery: Delivery) -> bool:
        kind, _, name = delivery.target.partition(":")
        wf = self.catalog.workflows.get(name) if kind == "workflow" else None
        return wf is not None and any(t.one_per_key or t.cancel_running for t in wf.triggers)

    async def _lane(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            kind = delivery.target.partition(":")[0]
            try:
                await self.deliver(delivery)
                metrics.inc("raysquad_events_delivered", target=kind, outcome="carried out")
            except Exception:  # noqa: BLE001 - it comes due again after event_retry_s
                metrics.inc("raysquad_events_delivered", target=kind, outcome="failed")
                log.warning("delivery of event %s to %s failed; it will be retried",
                            delivery.event.id, delivery.target, exc_info=True)

    async def deliver(self, delivery: Delivery) -> None:
        event, target = delivery.event, delivery.target
        if await self._still_live(delivery):
            return
        if delivery.attempt > self.settings.event_max_attempts:
            await self.store.finish_delivery(event.seq, target,
                                             f"gave up after {delivery.attempt - 1} attempts")
            return
        kind, _, name = target.partition(":")
        if kind == "workflow":
            await self._start_task(delivery, name)
        elif kind == "agent":
            await self._to_mailbox(delivery, name)
        elif kind == "webhook":
            await self._to_webhook(delivery, name)
        else:
            await self.store.finish_delivery(event.seq, target, f"unknown target {target!r}")

    async def _start_task(self, delivery: Delivery, name: str) -> None:
        event, target = delivery.event, delivery.target
        wf = self.catalog.workflows.get(name)
        trigger = next((t for t in wf.triggers if t.matches(event.topic, event.data)), None) if wf else None
        if wf is None or trigger is None:
            await self.store.finish_delivery(event.seq, target, "not subscribed any more")
            return
        try:
            wf.validate_input(event.data)
        except InvalidInput as e:
            await self.store.finish_delivery(event.seq, target, f"rejected: {e}")
            return
        if trigger.one_per_key or trigger.cancel_running:
            active = await self.store.active_key_tasks(target, event.tenant, event.key or "")
            if trigger.cancel_running:
                for task_id in active:
                    with contextlib.suppress(InvalidTransition, TaskNotFound):
                        await self.store.request_cancel(task_id)
            elif active:
                self._hint(time.time() + ONE_PER_KEY_RECHECK_S)
                await self.store.defer_delivery(event.seq, target,
                                                time.time() + ONE_PER_KEY_RECHECK_S)
                return
        request = SubmitRequest(workflow=name, input=event.data, tenant=event.tenant,
                                priority=self.settings.priority_range(event.tenant)[0],
                                idempotency_key=f"event:{event.id}:{name}")
        try:
            record, created = await self.store.submit(request)
        except (Refused, NotFound) as e:  # refused for what it is (a size, a policy): final
            await self.store.finish_delivery(event.seq, target, f"refused: {e}")
            return
        except RaysquadError as e:  # passing (a full queue, the Store or database restarting)
            wait = min(getattr(e, "retry_after_s", None) or TRANSIENT_RETRY_S,
                       self.settings.event_retry_s)
            log.warning("event %s to %s: %s; trying again in %.1f s", event.id, target, e, wait)
            await self._put_off(delivery, wait)
            return
        await self.store.finish_delivery(event.seq, target,
                                         "started" if created else "started before", record.id)

    async def _put_off(self, delivery: Delivery, wait_s: float) -> None:
        """Let a taken delivery come due again in ``wait_s``, its attempt not counted."""
        again = time.time() + wait_s
        self._hint(again)
        await self.store.defer_delivery(delivery.event.seq, delivery.target, again)

    @staticmethod
    def _message_id(delivery: Delivery) -> str:
        """An agent delivery's mailbox message: one id for all its attempts, so that the mailbox
        says whether a copy still waits or runs."""
        return f"event:{delivery.event.seq}:{delivery.target}"

    async def _still_live(self, delivery: Delivery) -> bool:
        """Whether an earlier attempt is still under way (an agent's message waits in its
        mailbox or a handler runs it; a webhook is being sent): if so the delivery is put off,
        neither copied nor counted, and True."""
        kind, _, name = delivery.target.partition(":")
        live = False
        if kind == "agent" and delivery.attempt > 1 and (mailbox := self.mailboxes.get(name)):
            live = await mailbox.holds(self._message_id(delivery))
        elif kind == "webhook":
            live = (delivery.event.seq, delivery.target) in self._sending
        if live:
            await self._put_off(delivery, self.settings.event_retry_s)
        return live

    async def _to_mailbox(self, delivery: Delivery, role: str) -> None:
        event = delivery.event
        mailbox = self.mailboxes.get(role)
        if mailbox is None:
            await self.store.finish_delivery(event.seq, delivery.target, "no such agent role")
            return
        msg = AgentMessage(id=self._message_id(delivery), role=role, task_id="",
                           step_key=f"event:{event.id}", tenant=event.tenant, payload=event.data,
                           event=event, attempt=delivery.attempt)
        try:
            await mailbox.put_batch([(msg.id, msg.priority, msg)])
        except QueueFull as e:  # back pressure, not a failed attempt
            await self._put_off(delivery, e.retry_after_s or 1.0)

    async def _to_webhook(self, delivery: Delivery, name: str) -> None:
        """Send in a task of its own: the round goes on at once, whatever the receiver does."""
        event, target = delivery.event, delivery.target
        config = self.settings.webhooks_out.get(name)
        if config is None:
            await self.store.finish_delivery(event.seq, target, "no such webhook")
            return
        if len(self._sending) >= MAX_SENDING:
            await self._put_off(delivery, 1.0)
            return
        sending = asyncio.get_running_loop().create_task(self._send_webhook(delivery, name, config))
        self._sending[(event.seq, target)] = sending
        sending.add_done_callback(lambda _: self._sending.pop((event.seq, target), None))

    async def _send_webhook(self, delivery: Delivery, name: str, config: WebhookTarget) -> None:
        try:
            await self._send_webhook_once(delivery, name, config)
        except Exception:  # noqa: BLE001 - it comes due again after event_retry_s
            log.warning("webhook %s of event %s failed; it will be retried", name,
                        delivery.event.id, exc_info=True)

    async def _send_webhook_once(self, delivery: Delivery, name: str,
                                 config: WebhookTarget) -> None:
        event, target = delivery.event, delivery.target
        if self._http is None:
            # Imported at the first webhook: httpx costs every process that imports this module
            # 10 MiB (its command line brings rich, click and pygments), and workers import it.
            import httpx

            from runtime.tools.fetch import GuardedBackend, GuardedTransport

            backend = GuardedBackend.from_settings(self.settings.tools)
            self._http = httpx.AsyncClient(transport=GuardedTransport(backend), trust_env=False)
        outcome = await webhooks.send(self._http, config, event)
        if outcome.ok:
            await self.store.finish_delivery(event.seq, target, f"sent ({outcome.detail})")
        elif outcome.final or delivery.attempt >= self.settings.event_max_attempts:
            await self.store.add_dead_letter(DeadLetter(
                id=uuid.uuid4().hex, tool=target, error=outcome.detail, error_type="WebhookFailed",
                args={"event_id": event.id, "event_seq": event.seq, "topic": event.topic,
                      "webhook": name}, attempts=delivery.attempt, tenant=event.tenant,
                created_at=time.time()))
            await self.store.finish_delivery(
                event.seq, target, f"dead after {delivery.attempt} attempt(s): {outcome.detail}")
        else:
            again = time.time() + webhooks.backoff_s(delivery.attempt, self.settings.webhook_retry_s)
            self._hint(again)
            await self.store.defer_delivery(event.seq, target, again, count_attempt=True)


class EventBusService(Protocol):
    async def start(self) -> None: ...
    async def poke(self) -> None: ...
    async def schedules_changed(self) -> None: ...
    async def stats(self) -> dict[str, int]: ...


class EventBusHandle(ActorHandle):
    """The event bus actor, typed."""

    @classmethod
    def find(cls, namespace: str) -> EventBusHandle:
        return cls.named(ACTOR_NAME, namespace)

    async def start(self) -> None:
        await self.via(EventBus.start)()

    async def poke(self) -> None:
        await self.via(EventBus.poke)()

    def notify(self, what: Wake) -> None:
        """``poke`` or ``schedules_changed`` without waiting for the actor."""
        self._send(what)

    async def schedules_changed(self) -> None:
        await self.via(EventBus.schedules_changed)()

    async def stats(self, deadline_s: float | None = None) -> dict[str, int]:
        return await self.via(EventBus.stats, deadline_s=deadline_s)()


_handles: dict[str, EventBusHandle] = {}


Wake = Literal["poke", "schedules_changed"]


def poke(namespace: str, what: Wake = "poke") -> None:
    """Wake the namespace's event bus (``poke``) or scheduler (``schedules_changed``) without
    waiting; if it cannot be reached, it polls anyway."""
    try:
        handle = _handles.get(namespace) or _handles.setdefault(namespace,
                                                                EventBusHandle.find(namespace))
        handle.notify(what)
    except Exception:  # noqa: BLE001 - no bus (yet): its next poll finds the change
        _handles.pop(namespace, None)


async def publish(store: StoreService, namespace: str,
                  events: list[TopicEvent]) -> list[tuple[TopicEvent, bool]]:
    """Keep the events in the Store (each once per id), then wake the bus; (event as kept, new?)."""
    kept = await store.publish(events)
    for event, new in kept:
        if new:
            metrics.inc("raysquad_events_published", topic=event.topic)
    if any(new for _, new in kept):
        poke(namespace)
    return kept


def new_event(topic: str, data: Any, *, key: str | None, event_id: str | None, tenant: str,
              source: str, max_bytes: int, runtime: bool = False) -> TopicEvent:
    """A TopicEvent to publish, checked before anything is kept: its topic (InvalidTopic; the
    ``RESERVED_TOPICS`` only when the ``runtime`` itself publishes), its data as JSON
    (InvalidEventData) and its size (InputTooLarge); an id made when none is given."""
    check_topic(topic)
    if not runtime and topic.split(".", 1)[0] in RESERVED_TOPICS:
        raise InvalidTopic(topic, "topics under " + " and ".join(
            f"'{t}.'" for t in RESERVED_TOPICS) + " are the runtime's own; publish on another")
    try:
        size = len(json.dumps(data, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise InvalidEventData(topic, str(e)) from None
    if size > max_bytes:
        raise InputTooLarge(size, max_bytes, "the event's data")
    if event_id is not None and not 0 < len(event_id) <= 200:
        raise InvalidEventData(topic, "an event id is 1 to 200 characters")
    if event_id is not None:
        check_name(event_id, "event id")
    if key is not None:
        check_name(key, "event key")
    return TopicEvent(id=event_id or uuid.uuid4().hex, topic=topic, key=key, data=data,
                      tenant=tenant, source=source, created_at=time.time())

