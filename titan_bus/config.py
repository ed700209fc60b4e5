"""The bus configuration: YAML file, built-in defaults, environment overrides.

Resolution order, later wins:

1. built-in defaults (the four default topics always exist);
2. the YAML file: ``path`` if given, else ``$TITAN_CONFIG``, else
   ``config/eventbus.yaml`` when it exists;
3. environment variables: ``TITAN_REDIS_URL``.

A ``streams:`` entry named like a default topic overrides that topic's
settings; any other name adds a topic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from titan_bus.errors import ConfigError
from titan_bus.schemas import BUILTIN_PAYLOADS as DEFAULT_TOPICS
from titan_bus.schemas import TOPIC_NAME

DEFAULT_CONFIG_PATH = Path("config/eventbus.yaml")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LANE_NAME = r"^[a-z][a-z0-9_]{0,31}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RedisConfig(_Section):
    """Where Redis lives. Sentinel and Cluster settings join this section."""

    url: str = DEFAULT_REDIS_URL
    socket_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    min_replicas: int = Field(default=0, ge=0)
    replica_timeout_ms: int = Field(default=1000, ge=1)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parsed = urlsplit(value)
            parsed.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from exc

        return value


class TopicDefaults(_Section):
    """Per-topic settings that every stream inherits unless it overrides them."""

    maxlen: int | None = Field(default=100_000, ge=1, description="entries per lane")
    rate_limit: float | None = Field(default=None, ge=0.001, description="events/s")
    retry_limit: int = Field(default=3, ge=0)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0, le=604_800)
    handler_timeout_s: float = Field(default=30.0, gt=0)
    claim_idle_s: float = Field(default=60.0, gt=0)
    max_payload_bytes: int | None = Field(default=None, ge=1)
    rate_burst: int | None = Field(default=None, ge=1, description="events")
    strict_priority: bool = False
    max_backlog: int | None = Field(default=None, ge=1, description="events")
    backlog_policy: Literal["reject", "block"] = "reject"
    backlog_timeout_s: float = Field(default=5.0, ge=0)


class StreamConfig(_Section):
    """One ``streams:`` entry: a topic and the settings it overrides."""

    name: str = Field(pattern=TOPIC_NAME.pattern)
    maxlen: int | None = Field(default=None, ge=1)
    rate_limit: float | None = Field(default=None, ge=0.001)
    retry_limit: int | None = Field(default=None, ge=0)
    retry_base_s: float | None = Field(default=None, gt=0)
    retry_max_s: float | None = Field(default=None, gt=0, le=604_800)
    handler_timeout_s: float | None = Field(default=None, gt=0)
    claim_idle_s: float | None = Field(default=None, gt=0)
    max_payload_bytes: int | None = Field(default=None, ge=1)
    rate_burst: int | None = Field(default=None, ge=1)
    strict_priority: bool | None = None
    max_backlog: int | None = Field(default=None, ge=1)
    backlog_policy: Literal["reject", "block"] | None = None
    backlog_timeout_s: float | None = Field(default=None, ge=0)
    priorities: dict[str, int] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str = ""

    @field_validator("priorities")
    @classmethod
    def _priorities(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return None if value is None else check_priorities(value)

    @model_validator(mode="after")
    def _schema_fits_topic(self) -> StreamConfig:
        if self.schema_ is not None and self.name in DEFAULT_TOPICS:
            raise ValueError(
                f"schema: {self.name!r} is a built-in topic; its schema is fixed "
                "(publish a new version such as a .v2 topic instead)"
            )
        if self.schema_ is None and self.name not in DEFAULT_TOPICS:
            raise ValueError(f"schema: new topic {self.name!r} needs a 'schema'")

        return self

    @field_validator("schema_")
    @classmethod
    def _schema_is_json_schema(
        cls, value: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc

        return value


class ProcessorConfig(_Section):
    """How a processor reads and runs handlers."""

    group: str = Field(default="titan", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    concurrency: int = Field(default=32, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=10, le=60_000)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    idempotency_window_s: float = Field(default=3600.0, ge=0, le=2_592_000)
    retention_interval_s: float = Field(default=5.0, gt=0)


class MetricsConfig(_Section):
    """Where a processor serves ``/metrics``, ``/healthz`` and ``/readyz``."""

    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"


class TracingConfig(_Section):
    """OpenTelemetry tracing: ``none`` (default, zero cost), ``console`` or ``otlp``."""

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = None
    protocol: Literal["grpc", "http"] = "http"
    service_name: str = "titan-bus"


class PublisherConfig(_Section):
    """Quotas of one publisher identity (the event ``source``, e.g. a plugin)."""

    name: str = Field(min_length=1, max_length=256)
    rate_limit: float | None = Field(default=None, ge=0.001, description="events/s")
    rate_burst: int | None = Field(default=None, ge=1, description="events")
    max_payload_bytes: int | None = Field(default=None, ge=1)


class BusConfig(_Section):
    """The whole configuration of one bus."""

    redis: RedisConfig = RedisConfig()
    key_prefix: str = Field(default="titan", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    global_rate_limit: float | None = Field(default=None, ge=0.001)
    global_rate_burst: int | None = Field(default=None, ge=1)
    priorities: dict[str, int] = Field(
        default_factory=lambda: {"high": 5, "normal": 3, "low": 1}
    )
    defaults: TopicDefaults = TopicDefaults()
    processor: ProcessorConfig = ProcessorConfig()
    streams: list[StreamConfig] = Field(default_factory=list)
    publishers: list[PublisherConfig] = Field(default_factory=list)
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("priorities")
    @classmethod
    def _priorities(cls, value: dict[str, int]) -> dict[str, int]:
        return check_priorities(value)

    @model_validator(mode="after")
    def _reads_end_before_the_socket_times_out(self) -> BusConfig:
        block_s = self.processor.block_ms / 1000
        if block_s >= self.redis.socket_timeout_s:
            raise ValueError(
                f"processor.block_ms ({self.processor.block_ms}) must be shorter than "
                f"redis.socket_timeout_s ({self.redis.socket_timeout_s} s), or every "
                "idle read times out and reconnects"
            )

        return self

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, value: list[StreamConfig]) -> list[StreamConfig]:
        first: dict[str, int] = {}
        for index, stream in enumerate(value):
            if stream.name in first:
                raise ValueError(
                    f"streams[{index}].name: stream {stream.name!r} is listed twice "
                    f"(first at streams[{first[stream.name]}])"
                )
            first[stream.name] = index

        return value


def check_priorities(value: dict[str, int]) -> dict[str, int]:
    """Check a lane-name-to-weight map; return it unchanged.

    Raises:
        ValueError: empty, a bad lane name, a negative weight, or all weights 0.
    """
    if not value:
        raise ValueError("at least one lane is required")
    for lane, weight in value.items():
        if not re.match(LANE_NAME, lane):
            raise ValueError(f"lane name {lane!r} must match {LANE_NAME}")
        if weight < 0:
            raise ValueError(f"lane {lane!r} weight must be 0 or more, got {weight}")
    if not any(value.values()):
        raise ValueError("at least one lane needs a weight above 0")

    return value


def load_config(path: str | Path | None = None) -> BusConfig:
    """Load the configuration, apply environment overrides, validate it.

    Args:
        path: a YAML file; ``$TITAN_CONFIG`` or ``config/eventbus.yaml`` if None.

    Raises:
        ConfigError: the file is missing, not YAML, or a key is invalid; the
            message names the file, the key and what was expected.
    """
    source = _config_path(path)
    raw = _read_yaml(source) if source is not None else {}
    redis_url = os.environ.get("TITAN_REDIS_URL")
    if redis_url:
        raw.setdefault("redis", {})
        if not isinstance(raw["redis"], dict):
            raise ConfigError(f"{source}: redis: expected a mapping")
        raw["redis"]["url"] = redis_url

    return parse_config(raw, origin=str(source) if source else "built-in defaults")


def parse_config(raw: dict[str, Any], *, origin: str = "config") -> BusConfig:
    """Validate an already-parsed config mapping.

    Raises:
        ConfigError: a key is invalid; the message names it and the expectation.
    """
    try:
        return BusConfig.model_validate(raw)
    except PydanticValidationError as exc:
        raise ConfigError(f"{origin}: {describe_errors(exc)}") from exc


def describe_errors(exc: PydanticValidationError) -> str:
    """Return pydantic errors as ``key.path: what was expected`` lines."""
    lines = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{where.lstrip('.') or 'top level'}: {error['msg']}{shown}")

    return "; ".join(lines)


def _config_path(path: str | Path | None) -> Path | None:
    if path is not None:
        return Path(path)
    env = os.environ.get("TITAN_CONFIG")
    if env:
        return Path(env)

    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")

    return raw
