"""All configuration in one place: pydantic-settings, environment prefix ``RAYSQUAD_``.

Nested fields use ``__``: ``RAYSQUAD_RETRY__MAX_ATTEMPTS=5``. Settings are passed explicitly to what
needs them; nothing reads the environment behind the caller's back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetryPolicy(BaseModel):
    """How a step, a tool call or an engine request is retried (runtime/retry.py): exponential
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
    enforce_eager: bool = True
    cpu_kvcache_gib: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1, description="engine actors per model, least-loaded routing")
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


class GateLimits(BaseModel):
    """The limits of one gate (a resource key such as ``openai:gpt-4o`` or ``http:api.example.com``).

    ``requests`` and ``tokens`` bound what may *start* in any window of ``interval_s`` seconds; a
    request holds its place in the window from its grant until ``interval_s`` after it ends, so an
    upstream never sees more than the limit in any window, whatever the network delays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int | None = Field(None, ge=1, description="requests per interval")
    tokens: int | None = Field(None, ge=1, description="tokens (prompt + completion) per interval")
    interval_s: float = Field(1.0, ge=0.001, le=86_400.0)
    concurrency: int | None = Field(None, ge=1, description="requests in flight at once")
    max_hold_s: float = Field(
        300.0, gt=0, description="a grant not released by then is taken back (its holder died)")


class ToolSettings(BaseModel):
    """Built-in tools and the tool executors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    executors: int = Field(2, ge=1, description="tool executor actors")
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


class WebhookSource(BaseModel):
    """An outside system that POSTs to ``/v1/webhooks/<source>``: the topic its deliveries are
    published on, and its Standard Webhooks secrets (``whsec_...``; more than one while rotating)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    secrets: tuple[str, ...] = Field(min_length=1)
    tenant: str = Field("default", description="the tenant its events belong to")


class WebhookTarget(BaseModel):
    """Where matching events are POSTed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://", description="http(s) URL the events are POSTed to")
    topics: tuple[str, ...] = Field(min_length=1, description="topic patterns, like task.failed")
    secret: str = Field(description="Standard Webhooks secret (whsec_...) the requests are signed with")
    tenant: str | None = Field(None, description="only this tenant's events (default: every tenant's)")

    @model_validator(mode="after")
    def _patterns(self) -> WebhookTarget:
        from runtime.errors import InvalidTopic
        from runtime.triggers import check_pattern

        for pattern in self.topics:
            try:
                check_pattern(pattern)
            except InvalidTopic as e:
                raise ValueError(str(e)) from None
        return self


class Settings(BaseSettings):
    """The runtime's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RAYSQUAD_", env_nested_delimiter="__", extra="forbid", frozen=True
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
    workers: int = Field(2, ge=1, description="workflow workers always running (the pool's minimum)")
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

    # Topic events (runtime/bus.py).
    event_poll_s: float = Field(
        0.5, gt=0, description="the shortest sleep of the event bus and the scheduler between "
                               "rounds (debounce and retry timing is this precise)")
    event_idle_s: float = Field(
        5.0, gt=0, description="the longest: with nothing due, the bus looks again after this "
                               "long (a publish wakes it at once)")
    event_retry_s: float = Field(
        60.0, gt=0, description="a delivery not finished in this long goes out again (a redelivery)")
    event_max_attempts: int = Field(5, ge=1, description="deliveries of one event to one subscriber")
    webhooks_out: dict[str, WebhookTarget] = Field(
        default_factory=dict, description="RAYSQUAD_WEBHOOKS_OUT: name -> {url, topics, secret, "
                                          "tenant?}: matching events are POSTed there, signed")
    webhook_retry_s: float = Field(
        1.0, gt=0, description="the first wait before an outbound webhook is tried again "
                               "(doubling each time, at most 300 s)")
    schedule_grace_s: float = Field(
        10.0, gt=0, description="a schedule's tick fired later than this was missed (see catch_up)")
    webhooks: dict[str, WebhookSource] = Field(
        default_factory=dict, description="RAYSQUAD_WEBHOOKS: source name -> {topic, secrets}")

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
    priorities: tuple[int, int] = Field(
        (0, 10), description="the priorities a tenant may use (lowest, highest), unless "
                             "tenant_priorities says otherwise")
    tenant_priorities: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="per tenant: the priorities it may use")
    max_json_depth: int = Field(64, ge=2, le=500, description="nesting of arrays and objects in a body")
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
    default_model: str = "sim-small"
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

    @model_validator(mode="after")
    def _workers_ordered(self) -> Settings:
        if self.workers_max is not None and self.workers_max < self.workers:
            raise ValueError(f"workers_max ({self.workers_max}) is below workers ({self.workers})")
        return self

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
