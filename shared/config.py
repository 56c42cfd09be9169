"""Settings every service shares, read from ``DCOSTACK_*`` environment variables.

Settings are constructed once in each service's ``main()`` and passed down; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "DCOSTACK_"
DEV_SECRET_KEY = "dev-insecure-secret-key"  # refused outside dev by a validator


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"
    PROD = "prod"


class AuthStrategy(StrEnum):
    KEYSTONE = "keystone"  # every API call carries a Keystone token; the token's project scopes it
    NOAUTH = "noauth"  # callers name their project (X-Project-Id): development and tests only


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"
    AUTO = "auto"


class ServiceSettings(BaseSettings):
    """What every DCOSTACK process needs: where PostgreSQL and Kafka are, how to log and trace."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        env_file=None,
    )

    service_name: ClassVar[str] = "dcostack"
    default_http_port: ClassVar[int] = 8080

    env: Environment = Environment.DEV
    database_url: str = "postgresql://127.0.0.1:5432/dcostack"
    database_schema: str = Field(default="", description="PostgreSQL schema; defaults to the service name")
    database_pool_size: int = Field(default=10, ge=1, le=200)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = Field(
        default="", description="Prefix added to every topic and consumer group (tests, shared clusters)"
    )
    kafka_partitions: int = Field(default=6, ge=1, le=1000)
    kafka_replication_factor: int = Field(default=1, ge=1, le=10)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="0 means the service's default port")
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.AUTO
    otel_exporter_otlp_endpoint: str | None = None
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    auth_strategy: AuthStrategy = Field(
        default=AuthStrategy.KEYSTONE,
        description="keystone: APIs take Keystone tokens (X-Auth-Token); noauth: X-Project-Id, dev/test only",
    )
    keystone_url: str | None = Field(
        default=None, description="Keystone's URL (e.g. https://keystone.example:5000/v3), validates tokens"
    )
    service_cloud: str | None = Field(
        default=None,
        description="clouds.yaml entry of DCOSTACK's own service user: the trustee runs act through",
    )
    startup_timeout_seconds: float = Field(
        default=30.0, ge=0.5, description="How long to wait for PostgreSQL and Kafka at start"
    )
    handler_max_attempts: int = Field(default=5, ge=1, le=100)
    retry_backoff_seconds: float = Field(default=0.2, gt=0)
    retry_backoff_max_seconds: float = Field(default=10.0, gt=0)
    consumer_batch_size: int = Field(
        default=500, ge=1, le=10000, description="Most events the control-lane consumer takes per poll"
    )
    bulk_consumer_batch_size: int = Field(
        default=1000, ge=1, le=10000, description="Most events the bulk-lane consumer takes per poll"
    )
    outbox_batch_size: int = Field(default=1000, ge=1, le=10000)
    topic_check_seconds: float = Field(default=10.0, gt=0, description="How often missing topics are recreated")
    outbox_poll_seconds: float = Field(default=1.0, gt=0, description="Fallback poll when no NOTIFY arrives")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _enforce_non_default_secrets(self) -> Self:
        if self.env != Environment.DEV and self.secret_key.get_secret_value() == DEV_SECRET_KEY:
            raise ValueError(
                f"{ENV_PREFIX}SECRET_KEY is the development default while {ENV_PREFIX}ENV={self.env.value}; "
                f"set {ENV_PREFIX}SECRET_KEY to a random value (e.g. `openssl rand -hex 32`)"
            )
        return self

    @model_validator(mode="after")
    def _identity(self) -> Self:
        if self.auth_strategy == AuthStrategy.KEYSTONE and not self.keystone_url:
            raise ValueError(
                f"{ENV_PREFIX}KEYSTONE_URL is not set while {ENV_PREFIX}AUTH_STRATEGY=keystone; set it to "
                f"Keystone's URL (e.g. http://127.0.0.1:25000/v3), or set {ENV_PREFIX}AUTH_STRATEGY=noauth "
                "for local development without access control"
            )
        if self.auth_strategy == AuthStrategy.NOAUTH and self.env not in (Environment.DEV, Environment.TEST):
            raise ValueError(
                f"{ENV_PREFIX}AUTH_STRATEGY=noauth lets any caller act in any project; it is refused while "
                f"{ENV_PREFIX}ENV={self.env.value}: set {ENV_PREFIX}AUTH_STRATEGY=keystone and "
                f"{ENV_PREFIX}KEYSTONE_URL"
            )
        return self

    @property
    def db_schema(self) -> str:
        return self.database_schema or self.service_name

    @property
    def port(self) -> int:
        return self.http_port or self.default_http_port


S = TypeVar("S", bound=ServiceSettings)


class SettingsError(Exception):
    """Settings could not be read; ``str()`` is one line per problem, naming the variable and the fix."""


def _variable_for(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc if part != "__root__")


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or raise :class:`SettingsError` with a readable message per bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if err["loc"]:
                var = _variable_for(err["loc"])
                given = os.environ.get(var)
                shown = f" (got {given!r})" if given is not None else ""
                lines.append(f"{var}{shown}: {err['msg']}")
            else:
                lines.append(str(err["msg"]).removeprefix("Value error, "))
        raise SettingsError("; ".join(lines)) from None


class CloudExecutorSettings(ServiceSettings):
    """Settings of the services that act in OpenStack (compute, network, storage)."""

    cloud: str = Field(default="devcloud", description="The clouds.yaml entry the service acts in")
    cloud_concurrency: int = Field(default=32, ge=1, le=500, description="Steps worked on at once")
    step_max_tries: int = Field(default=8, ge=1, le=100, description="Attempts on retriable cloud errors")
    step_retry_backoff_seconds: float = Field(default=1.0, gt=0, description="First retry delay; doubles")
    operation_lease_seconds: float = Field(
        default=20.0, gt=1, description="After a crash, another worker takes over a step after this long"
    )


def unknown_variables(cls: type[ServiceSettings]) -> list[str]:
    """``DCOSTACK_*`` variables that no setting reads: almost always a typo."""
    known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
    extra = {
        "DCOSTACK_TEST_DATABASE_URL",
        "DCOSTACK_TEST_KAFKA",
        "DCOSTACK_TEST_CLOUD",
        "DCOSTACK_TEST_CLOUD_ADMIN",
        "DCOSTACK_PLANNER_URL",  # the CLI's
    }
    return sorted(
        name
        for name in os.environ
        if name.startswith(ENV_PREFIX)
        and not name.startswith("DCOSTACK_DEVCLOUD_")  # devcloud's own settings
        and name not in known
        and name not in extra
        and not any(name.startswith(k + "__") for k in known)
    )
