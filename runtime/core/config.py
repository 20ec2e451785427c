"""All configuration in one place: pydantic-settings, environment prefix ``RAYSQUAD_``.

Nested fields use ``__``: ``RAYSQUAD_RETRY__MAX_ATTEMPTS=5``. Settings are passed explicitly to what
needs them; nothing reads the environment behind the caller's back.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetryPolicy(BaseModel):
    """How a step, a tool call or an engine request is retried (runtime/core/retry.py): exponential
    backoff with jitter, up to ``max_attempts`` in all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(3, ge=1)
    initial_backoff_s: float = Field(0.2, ge=0, allow_inf_nan=False)
    backoff_multiplier: float = Field(2.0, ge=1, allow_inf_nan=False)
    max_backoff_s: float = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="the longest backoff; also caps an upstream's Retry-After")
    jitter: float = Field(0.2, ge=0, le=1, description="fraction of each delay drawn at random")
    non_retryable: tuple[str, ...] = Field(
        (), description="exception class names that fail the step at once"
    )

    def backoff_s(self, attempt: int, rand: float) -> float:
        """Delay before attempt ``attempt + 1`` (attempts count from 1); ``rand`` is in [0, 1)."""
        try:
            base = min(self.max_backoff_s,
                       self.initial_backoff_s * self.backoff_multiplier ** (attempt - 1))
        except OverflowError:  # a very late attempt: the cap applies
            base = self.max_backoff_s
        return base * (1 - self.jitter + 2 * self.jitter * rand)


class AgentPoolConfig(BaseModel):
    """Sizing of one agent role's pool; a role's class attributes give the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    concurrency: int = Field(8, ge=1, description="messages one replica handles at once")
    num_cpus: float = Field(0.05, ge=0)
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per replica (to place a role on "
                                          "a group of nodes)")
    target_backlog: int = Field(
        8, ge=1, description="queued messages per replica above which the pool grows"
    )
    idle_s: float = Field(30.0, ge=0, description="idle time before a replica above the minimum stops")


class SimulatedEngineConfig(BaseModel):
    """The simulated engine: deterministic text and a latency model, for tests and benchmarks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_s: float = Field(0.02, ge=0, description="time to first token")
    tpot_s: float = Field(0.002, ge=0, description="time per output token")
    max_concurrency: int = Field(64, ge=1)
    admission_aging_per_s: float = Field(
        1.0, ge=0, description="priority points a request waiting for a slot gains per second")
    admission_service_weight: float = Field(
        10.0, ge=0, description="priority points a request loses per second of engine time its "
                               "task has had here (0: priority, then arrival)")
    script: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'module:function' that scripts the replies (a test's fake model): called "
                    "with each ChatRequest, it returns text, a ToolCall or a list of them, or a "
                    "structured answer (a dict or pydantic model); default: the built-in policy")


class VLLMEngineConfig(BaseModel):
    """A vLLM engine actor: the model folder, vLLM's limits, and the resources the actor asks Ray for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path = Path(".raysquad/models/smollm2-135m-instruct")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "float32"
    max_model_len: int = Field(2048, ge=16)
    max_num_seqs: int = Field(32, ge=1, description="sequences vLLM batches at once")
    max_inflight: int = Field(32, ge=1, description="requests admitted per actor; more wait by priority")
    admission_aging_per_s: float = Field(
        1.0, ge=0, description="priority points a request waiting for admission gains per second")
    admission_service_weight: float = Field(
        10.0, ge=0, description="priority points a request loses per second of engine time its "
                               "task has had here (0: priority, then arrival)")
    enforce_eager: bool = True
    cpu_kvcache_gib: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1, description="engine actors per model (routing: engine_routing)")
    prefix_caching: bool = Field(
        True, description="vLLM's automatic prefix caching: a prompt's cached leading blocks are "
                          "not prefilled again (what affinity routing makes the most of)")
    cpu_threads_bind: tuple[str, ...] = Field(
        (), description="CPU only: VLLM_CPU_OMP_THREADS_BIND per replica, replica i taking entry "
        "i modulo their count (('0', '1'): two replicas on a core each); empty: vLLM's own choice")
    num_gpus: float = Field(0, ge=0, description="GPUs per engine actor (0 on a CPU machine)")
    num_cpus: float = Field(0, ge=0, description="CPUs reserved per engine actor")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model spans (placement group)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)


class OpenAIEngineConfig(BaseModel):
    """Any OpenAI-compatible endpoint. The key is read from the environment variable named here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    remote_model: str | None = Field(None, description="the endpoint's model name, if not ours")
    timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(5, ge=1, description="tries on 429, 5xx and connection errors")
    initial_backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    send_priority: bool = Field(False, description="send the task's priority (vLLM servers)")
    tool_mode: Literal["native", "json_schema"] = Field(
        "native", description="native: the API's tools and tool_choice; json_schema: the tools "
        "and the answer as one JSON schema sent as response_format (llm/constrained.py), for "
        "servers whose own tool calling does not hold the model to the tools' schemas")


MAX_GATE_REQUESTS = 10**9
MAX_GATE_TOKENS = 10**12
MAX_GATE_CONCURRENCY = 10**6


class GateLimits(BaseModel):
    """The limits of one gate (a resource key such as ``openai:gpt-4o`` or ``http:api.example.com``).

    ``requests`` and ``tokens`` bound what may *start* in any window of ``interval_s`` seconds; a
    request holds its place in the window from its grant until ``interval_s`` after it ends, so an
    upstream never sees more than the limit in any window, whatever the network delays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Strict: ``true`` is not 1, nor ``"5"`` 5 (a float field takes an integer); past the bounds
    # below, a limit is a typo, refused (422 over HTTP) rather than kept.
    requests: int | None = Field(None, ge=1, le=MAX_GATE_REQUESTS, strict=True, description=(
        f"requests per interval, 1 to {MAX_GATE_REQUESTS:,}"))
    tokens: int | None = Field(None, ge=1, le=MAX_GATE_TOKENS, strict=True, description=(
        f"tokens (prompt + completion) per interval, 1 to {MAX_GATE_TOKENS:,}"))
    interval_s: float = Field(1.0, ge=0.001, le=86_400.0, strict=True, allow_inf_nan=False,
                              description="the window, in seconds: 0.001 to 86,400 (a day)")
    concurrency: int | None = Field(None, ge=1, le=MAX_GATE_CONCURRENCY, strict=True, description=(
        f"requests in flight at once, 1 to {MAX_GATE_CONCURRENCY:,}"))
    max_hold_s: float = Field(
        300.0, gt=0, le=86_400.0, strict=True, allow_inf_nan=False,
        description="a grant not released by then is taken back (its holder died): above 0, at "
                    "most 86,400 s (a day)")


class ToolSettings(BaseModel):
    """Built-in tools and the tool executors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    executors: int = Field(
        1, ge=1, description="tool executor actors, spread over the nodes: one runs thousands of "
                             "calls at once (async, sync tools in threads); raise it on a cluster")
    executor_num_cpus: float = Field(0.05, ge=0)
    timeout_s: float = Field(30.0, gt=0, description="default per-attempt timeout of a tool call")
    step_timeout_s: float = Field(
        300.0, gt=0, description="default timeout of a ctx.tool step as a whole: its gate waits, "
                                 "attempts and backoff (each attempt has timeout_s)")
    retry: RetryPolicy = RetryPolicy()
    http_max_bytes: int = Field(2 << 20, ge=1, description="http_fetch's cap on a response body")
    http_timeout_s: float = Field(10.0, gt=0)
    http_max_redirects: int = Field(5, ge=0)
    http_allow_networks: tuple[str, ...] = Field(
        (), description="CIDRs http_fetch may reach although they are private (e.g. 127.0.0.1/32)")
    http_allow_ports: tuple[int | str, ...] = Field(
        (80, 443), description="ports http_fetch may connect to: numbers, or ranges such as "
        "'8000-8999' ('1-65535' allows any port)")
    sql_url: str | None = Field(
        None, description="sql_query's database: a SQLite path or a postgresql:// URL")
    sql_max_rows: int = Field(1000, ge=1)
    sql_max_bytes: int = Field(
        1 << 20, ge=1, description="sql_query's cap on a result's values (as text) and on any one "
        "value: rows past it are cut (truncated=true), a value past it refuses the query")
    sql_timeout_s: float = Field(10.0, gt=0)

    def model_post_init(self, context: object) -> None:
        self.port_ranges()  # a bad entry fails here, at configuration

    def port_ranges(self) -> tuple[range, ...]:
        """``http_allow_ports`` as ranges."""
        ranges = []
        for entry in self.http_allow_ports:
            first, dash, last = str(entry).strip().partition("-")
            last = last if dash else first
            if not (f"{first}{last}".isascii() and first.isdecimal() and last.isdecimal()
                    and 1 <= int(first) <= int(last) <= 65535):
                raise ValueError(f"http_allow_ports: {entry!r} is neither a port (1-65535) nor a "
                                 f"range such as '8000-8999'")
            ranges.append(range(int(first), int(last) + 1))
        return tuple(ranges)


MIN_WEBHOOK_KEY_BYTES = 24


def _webhook_secret(secret: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 bytes. A shorter key
    could be brute-forced offline from one observed delivery; one that does not decode would fail
    every delivery instead of being refused here."""
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)  # padding optional
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ValueError(
            f"a webhook secret must be 'whsec_' followed by the base64 of at least "
            f"{MIN_WEBHOOK_KEY_BYTES} random bytes (such as 'whsec_' + base64 of os.urandom(32)); "
            f"this one {'decodes to ' + str(len(key)) + ' bytes' if key else 'is not that'}")
    return secret


WebhookSecret = Annotated[str, AfterValidator(_webhook_secret)]


class WebhookSource(BaseModel):
    """An outside system that POSTs to ``/v1/webhooks/<source>``: the topic its deliveries are
    published on, and its Standard Webhooks secrets (``whsec_...``; more than one while rotating)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    topic: str
    secrets: tuple[WebhookSecret, ...] = Field(min_length=1)
    tenant: str = Field("default", description="the tenant its events belong to")


class McpServer(BaseModel):
    """An MCP server whose tools become raysquad tools (``<server>.<tool>``): a command run over
    stdio (in each tool executor), or a streamable HTTP ``url``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    command: tuple[str, ...] | None = Field(None, min_length=1, description="stdio: argv to run")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: its environment, over "
                                "a minimal one (HOME, PATH, USER ...), not the runtime's")
    cwd: str | None = Field(None, description="stdio: its working directory")
    url: str | None = Field(None, pattern=r"^https?://", description="streamable HTTP endpoint")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP: headers sent")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="bounds each call's attempt")
    start_timeout_s: float = Field(60.0, gt=0, le=3600, description=(
        "bounds the server's start (a new session: a stdio process to launch, a handshake), "
        "apart from the call it is opened for"))

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server has either a command (stdio) or a url (HTTP)")
        return self


class McpTool(BaseModel):
    """One tool of an MCP server, as listed when the runtime started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class WebhookTarget(BaseModel):
    """Where matching events are POSTed."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(pattern=r"^https?://", description="http(s) URL the events are POSTed to")
    topics: tuple[str, ...] = Field(min_length=1, description="topic patterns, like task.failed")
    secret: WebhookSecret = Field(description="Standard Webhooks secret (whsec_ and the base64 of "
                                              "at least 24 bytes) the requests are signed with")
    tenant: str = Field(min_length=1, description="whose events: a tenant's, or '*' for every "
                                                  "tenant's (said explicitly, never by default)")

    @model_validator(mode="after")
    def _patterns(self) -> WebhookTarget:
        from runtime.core.errors import InvalidTopic
        from runtime.core.triggers import check_pattern

        for pattern in self.topics:
            try:
                check_pattern(pattern)
            except InvalidTopic as e:
                raise ValueError(str(e)) from None
        return self


class Settings(BaseSettings):
    """The runtime's configuration."""

    # A refused value is not echoed in the error (it may be a secret: a key, a password in a URL).
    model_config = SettingsConfigDict(
        env_prefix="RAYSQUAD_", env_nested_delimiter="__", extra="forbid", frozen=True,
        hide_input_in_errors=True,
    )

    # Where Ray runs. None starts a local cluster; "auto" or "ray://..." joins one.
    ray_address: str | None = None
    namespace: str = "raysquad"
    ray_num_cpus: int | None = None
    ray_object_store_memory: int | None = None
    ray_include_dashboard: bool = Field(
        False, description="start the Ray dashboard with a local cluster (`raysquad up` does unless "
                           "--no-dashboard)")
    ray_metrics_export_port: int | None = Field(
        None, ge=1, le=65535, description="the port of a local cluster's Prometheus endpoint "
                                          "(`raysquad up --metrics-port`); Ray's and raysquad's metrics")
    metrics: bool = Field(True, description="record raysquad's metrics (RAYSQUAD_METRICS)")
    tracing: str | None = Field(
        None, pattern=r"^(otlp|console|file:.+)$",
        description="RAYSQUAD_TRACING: export OpenTelemetry spans of tasks and steps: otlp "
                    "(OTEL_EXPORTER_OTLP_* say where), console, or file:PATH (JSON lines)")
    ray_log_to_driver: bool = False
    ship_apps: bool = Field(
        True, description="RAYSQUAD_SHIP_APPS: a runtime joining a cluster by address sends the "
                          "app modules it finds in the current folder to the cluster's nodes (Ray's "
                          "runtime env py_modules); off where the nodes have them installed")
    detached: bool = Field(
        False, description="the runtime's actors outlive the process that started them (`raysquad "
                           "up --detach`); `raysquad down` stops them")

    # Durable state.
    data_dir: Path = Path(".raysquad")
    store: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="the Store backend (RAYSQUAD_STORE): one SQLite file, or PostgreSQL")
    postgres_url: str | None = Field(
        None, description="the PostgreSQL Store's database, a libpq URL such as "
                          "postgresql://user@host:5432/raysquad (RAYSQUAD_POSTGRES_URL); step blobs "
                          "are kept in the database too")
    postgres_direct: bool = Field(
        True, description="with PostgreSQL, the dispatcher, workers, tool executors and the HTTP "
                          "app reach the database through their own connection pools, woken by "
                          "LISTEN/NOTIFY, with no hop through the Store actor")
    postgres_pool_size: int = Field(
        4, ge=1, le=64, description="PostgreSQL connections each process may hold (direct mode)")
    sqlite_path: Path | None = Field(None, description="defaults to DATA_DIR/raysquad.db")
    sqlite_synchronous: Literal["FULL", "EXTRA", "NORMAL"] = Field(
        "FULL", description="FULL: an acknowledged submit survives power loss; NORMAL trades that "
                            "for fewer fsyncs (a crash of the process still loses nothing)")

    # Task flow.
    workers: int = Field(
        1, ge=1, description="workflow workers always running (the pool's minimum); one runs "
                             "tasks_per_worker workflows at once, and a dead one is replaced")
    workers_max: int | None = Field(
        None, ge=1, description="the pool grows up to this many workers on backlog (default: "
                                "`workers`, a fixed pool)")
    worker_target_backlog: int | None = Field(
        None, ge=1, description="queued plus running tasks per worker above which the pool grows "
                                "(default: tasks_per_worker)")
    worker_idle_s: float = Field(
        30.0, ge=0, description="idle time before a worker above the minimum stops")
    tasks_per_worker: int = Field(64, ge=1, description="workflows one worker runs at once")
    worker_num_cpus: float = Field(0.1, ge=0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per worker (to place workers on a "
                                          "group of nodes)")
    queue_capacity: int = Field(10_000, ge=1, description="queued tasks before submits are refused")
    dispatch_window: int = Field(10_000, ge=1, description=(
        "queued tasks the dispatcher holds in memory, the highest-ranked; the rest stay in the "
        "Store and come into the window in rank order as it drains"))
    lease_s: float = Field(30.0, gt=0, description="a claimed task returns to the queue if not renewed")
    max_task_crashes: int = Field(
        3, ge=1, description="runs of a task that may end without a word (its worker died, its lease "
                             "ran out, its steps did not decode) before it fails as a poison task")
    sweep_interval_s: float = Field(1.0, gt=0)
    aging_per_s: float = Field(
        1.0, ge=0, description="priority points a queued item gains per second of waiting"
    )
    inline_limit_bytes: int = Field(
        1 << 20, ge=1, description="step outputs larger than this travel as a Ref (object store)"
    )
    retry: RetryPolicy = RetryPolicy()
    step_timeout_s: float | None = Field(None, gt=0, description="default per-attempt step timeout")
    agent_timeout_s: float = Field(
        300.0, gt=0, description="default per-attempt timeout of an agent step (ctx.agent(...).run)")
    task_token_budget: int | None = Field(
        None, ge=1, description="the most tokens a task's model calls may use (delegations "
                                "included), unless its submit sets token_budget; none by default")
    agent_record_calls: bool = Field(
        True, description="record each model and tool call of an agent's handler under its step, "
                          "so a message handled again replays them (off: it makes them all again)")

    # Topic events (runtime/events/bus.py).
    event_poll_s: float = Field(
        0.5, gt=0, description="the shortest sleep of the event bus and the scheduler between "
                               "rounds (debounce and retry timing is this precise)")
    event_idle_s: float = Field(
        5.0, gt=0, description="the longest: with nothing due, the bus looks again after this "
                               "long (a publish wakes it at once)")
    event_retry_s: float = Field(
        60.0, gt=0, description="a delivery not finished in this long goes out again (a redelivery)")
    event_max_attempts: int = Field(5, ge=1, description="deliveries of one event to one subscriber")
    event_retention_s: float = Field(
        7 * 86400.0, gt=0, description="events older than this whose deliveries have all ended "
                                       "are forgotten, with their deliveries (an id may then be "
                                       "published again as a new event)")
    tenant_events: int = Field(
        1_000_000, ge=1, description="events one tenant may keep; past it publishes get 429")
    tenant_event_bytes: int = Field(
        1 << 30, ge=1, description="bytes of event data one tenant may keep; past it publishes get 429")
    mailbox_capacity_bytes: int = Field(
        256 << 20, ge=1, description="bytes one agent mailbox holds, queued and in flight (an "
                                     "event's data rides inline); past it a put is refused and "
                                     "the sender tries again later")
    webhooks_out: dict[str, WebhookTarget] = Field(
        default_factory=dict, description="RAYSQUAD_WEBHOOKS_OUT: name -> {url, topics, secret, "
                                          "tenant?}: matching events are POSTed there, signed")
    webhook_retry_s: float = Field(
        1.0, gt=0, description="the first wait before an outbound webhook is tried again "
                               "(doubling each time, at most 300 s)")
    schedule_grace_s: float = Field(
        10.0, gt=0, description="a schedule's tick fired later than this was missed (see catch_up)")
    max_schedules_per_tenant: int = Field(
        1000, ge=1, description="schedules one tenant may keep; past it a new one gets 422 (the "
                                "app's own, declared on its workflows, are kept whatever it is)")
    schedule_min_interval_s: float = Field(
        60.0, ge=0, description="a tenant's schedule may tick at most this often (a cron with "
                                "seconds below it gets 422); admin_tenants, and every tenant with "
                                "no api_keys, have no floor")
    webhooks: dict[str, WebhookSource] = Field(
        default_factory=dict, description="RAYSQUAD_WEBHOOKS: source name -> {topic, secrets}")
    mcp_servers: dict[str, McpServer] = Field(
        default_factory=dict, description="RAYSQUAD_MCP_SERVERS: name -> {command, env} (stdio) "
                                          "or {url, headers} (streamable HTTP)")
    mcp_tools: tuple[McpTool, ...] = Field(
        (), description="the MCP servers' tools, listed when the runtime starts (not set by hand)")

    # The HTTP API.
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="bearer key -> tenant; empty serves loopback only, no auth"
    )
    admin_tenants: tuple[str, ...] = Field(
        (), description="tenants that may see and change gates over HTTP (with no API keys: anyone)")
    max_body_bytes: int = Field(1 << 20, ge=1, description="larger request bodies get 413")
    max_batch_body_bytes: int = Field(16 << 20, ge=1, description=(
        "larger bodies of a batch route (POST /v1/tasks:batch, up to 1,000 tasks) get 413"))
    http_replicas_max: int = Field(
        1, ge=1, description="Ingress replicas; above 1 they autoscale (more only helps with more cores)")
    http_access_log: bool = Field(False, description="Serve's per-request access log")
    http_ingress: Literal["direct", "proxy"] = Field("direct", description=(
        "direct: the Ingress replica serves HTTP on http_port itself, no Serve proxy (Serve's "
        "throughput-optimized mode; one replica, on a cluster this command starts); proxy: "
        "Serve's HTTP proxy in front (several replicas, or a cluster started elsewhere)"))

    # What one tenant may ask of the system (each decided before anything is committed).
    max_input_bytes: int = Field(1 << 20, ge=1, description="a task's input, as JSON; larger gets 413")
    tenant_queued_bytes: int = Field(
        1 << 30, ge=1, description="input bytes of one tenant's queued tasks; past it submits get 429")
    tenant_queued_tasks: int | None = Field(
        None, ge=1, description="queued tasks of one tenant; past it submits get 429, so that one "
                                "tenant cannot fill queue_capacity for all (default: a quarter of "
                                "queue_capacity with several tenants, all of it with one)")
    task_pending_signals: int = Field(
        100, ge=1, description="signals a task holds that it has not waited for yet; past it "
                               "a signal gets 429")
    task_signal_bytes: int = Field(
        4 << 20, ge=1, description="bytes of payload of a task's signals not waited for yet; past "
                                   "it a signal gets 429")
    priorities: tuple[int, int] = Field(
        (0, 10), description="the priorities a tenant may use (lowest, highest), unless "
                             "tenant_priorities says otherwise")
    tenant_priorities: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="per tenant: the priorities it may use")
    max_json_depth: int = Field(64, ge=2, le=500, description="nesting of arrays and objects in a body")
    mcp_wait_s: float = Field(
        60.0, gt=0, le=3600, description="/mcp: how long a tool call without tasks (and "
                                         "tasks/result) waits for the task before answering with "
                                         "its id to poll")
    max_streams_per_tenant: int = Field(
        32, ge=1, description="event streams one tenant may hold open on one Ingress replica")
    max_streams: int = Field(
        128, ge=1, description="event streams one Ingress replica holds open in all (below its "
                               "request slots, so streams never starve other requests)")
    stream_max_s: float = Field(
        300.0, gt=0, description="an event stream ends after this long; the client reconnects "
                                 "with Last-Event-ID")

    # Flow control: gates by resource key, fair share between tenants.
    gates: dict[str, GateLimits] = Field(default_factory=dict, description="limits by resource key")
    tenant_weights: dict[str, float] = Field(
        default_factory=dict, description="share of a contended gate per tenant (default 1)")
    gate_aging_per_s: float = Field(
        0.1, ge=0, description="priority levels a waiter at a gate gains per second of waiting")

    # Tools.
    tools: ToolSettings = ToolSettings()

    # Agents and engines.
    agents: dict[str, AgentPoolConfig] = Field(default_factory=dict, description="per-role overrides")
    engine: Literal["simulated", "vllm", "openai"] = "simulated"
    engine_replicas_max: int | None = Field(
        None, ge=1, description="engine actors per model grow up to this many with the LLM requests "
                                "in flight on them (default: the fixed count, vllm.replicas or 1)")
    engine_target_requests: int = Field(
        8, ge=1, description="LLM requests in flight per engine actor above which one is added")
    engine_idle_s: float = Field(
        60.0, ge=0, description="idle time before an engine actor above the minimum stops")
    engine_routing: Literal["affinity", "least_loaded"] = Field(
        "affinity", description="how a model's requests are spread over its replicas: affinity (a "
        "conversation's turns to the replica that served its last turn, first turns by a hash of "
        "their opening, within engine_affinity_slack of the least loaded) or least_loaded")
    engine_affinity_slack: int = Field(
        4, ge=0, description="requests in flight above the least-loaded replica's that a "
                             "conversation's replica may have and still get its next turn")
    engine_affinity_sessions: int = Field(
        10_000, ge=1, description="conversations each router remembers the replica of (LRU)")
    default_model: str = "sim-small"
    models: tuple[str, ...] = Field(
        (), description="RAYSQUAD_MODELS: models served besides default_model and the models and "
                        "fallback_models the app's agents declare (a workflow's "
                        "ctx.llm.chat(model=...), a dead letter replayed on another model)")
    llm_cache: bool = Field(
        False, description="RAYSQUAD_LLM_CACHE: answer a temperature-0 model call from the Store's "
                           "memo when the same tenant asked the same before (model, messages, "
                           "tools, response format, sampling), without an engine; a call "
                           "(cache=) or an agent (cache =) may say otherwise")
    llm_cache_ttl_s: float | None = Field(
        None, gt=0, description="RAYSQUAD_LLM_CACHE_TTL_S: a memo entry older than this answers "
                                "nothing (the call reaches an engine, and its answer replaces the "
                                "entry); unset: entries last for good")
    simulated: SimulatedEngineConfig = SimulatedEngineConfig()
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    openai: OpenAIEngineConfig = OpenAIEngineConfig()

    @model_validator(mode="after")
    def _ranges_ordered(self) -> Settings:
        for who, (low, high) in [("priorities", self.priorities),
                                 *((f"tenant_priorities[{t!r}]", r)
                                   for t, r in self.tenant_priorities.items())]:
            if low > high:
                raise ValueError(f"{who}: the lowest priority {low} is above the highest {high}")
        return self

    @field_validator("api_keys")
    @classmethod
    def _no_empty_key(cls, keys: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() for key in keys):
            raise ValueError("api_keys: an empty key would let in anyone who sends "
                             "'Authorization: Bearer ' with nothing after it; remove it")
        return keys

    @field_validator("mcp_servers")
    @classmethod
    def _mcp_names(cls, servers: dict[str, McpServer]) -> dict[str, McpServer]:
        for name in servers:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
                raise ValueError(f"mcp_servers: {name[:40]!r} is not a server name (letters, digits, "
                                 "_ and -, at most 32: its tools are named <server>.<tool>)")
        return servers

    @model_validator(mode="after")
    def _workers_ordered(self) -> Settings:
        if self.workers_max is not None and self.workers_max < self.workers:
            raise ValueError(f"workers_max ({self.workers_max}) is below workers ({self.workers})")
        return self

    @property
    def tenant_task_cap(self) -> int:
        """How many queued tasks one tenant may hold: ``tenant_queued_tasks``; by default a quarter
        of ``queue_capacity`` where API keys name several tenants, and all of it where there is
        only one (no keys, or keys of one tenant: no other tenant to leave room for)."""
        if self.tenant_queued_tasks:
            return self.tenant_queued_tasks
        if len(set(self.api_keys.values())) < 2:
            return self.queue_capacity
        return max(1, self.queue_capacity // 4)

    def schedule_interval_floor_s(self, tenant: str) -> float | None:
        """How often ``tenant``'s schedules may tick at most; None: no floor (an admin tenant, or
        no API keys, where every caller is one)."""
        if not self.api_keys or tenant in self.admin_tenants:
            return None
        return self.schedule_min_interval_s

    def priority_range(self, tenant: str) -> tuple[int, int]:
        """The priorities ``tenant`` may use."""
        return self.tenant_priorities.get(tenant, self.priorities)

    @property
    def engine_replicas(self) -> tuple[int, int]:
        """Engine actors per model: (always running, at most)."""
        low = self.vllm.replicas if self.engine == "vllm" else 1
        return low, max(low, self.engine_replicas_max or low)

    @property
    def database_path(self) -> Path:
        return self.sqlite_path or self.data_dir / "raysquad.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
