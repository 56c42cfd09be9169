"""Where devcloud keeps its state, which ports it listens on, which database and broker it uses.

Every setting is a ``DCOSTACK_DEVCLOUD_*`` environment variable; the defaults make a fresh machine of
the python-svc kind work with no configuration (MariaDB and RabbitMQ on 127.0.0.1).
"""

from __future__ import annotations

import sys
from enum import IntEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _xdg(var: str, fallback: str) -> Path:
    import os

    return Path(os.environ.get(var) or Path.home() / fallback)


class Port(IntEnum):
    """Offsets from ``port_base``: one fixed slot per listening service."""

    KEYSTONE = 0
    PLACEMENT = 1
    GLANCE = 2
    NOVA = 3
    NEUTRON = 4
    CINDER = 5
    OCTAVIA = 6
    SWIFT = 7
    SWIFT_ACCOUNT = 8
    SWIFT_CONTAINER = 9
    SWIFT_OBJECT = 10
    HEAT = 11


class DevcloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DCOSTACK_DEVCLOUD_", extra="forbid", env_file=None)

    home: Path = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "dcostack" / "devcloud",
        description="State, configuration, logs and PID files of the running cloud",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "dcostack" / "devcloud",
        description="The OpenStack virtualenv, reused while devcloud/requirements.txt is unchanged",
    )
    python: str = Field(default=sys.executable, description="Interpreter for the OpenStack virtualenv")
    port_base: int = Field(default=25000, ge=1024, le=65000, description="First of 12 consecutive ports")
    database_url: str = Field(
        default="mysql+pymysql://root@127.0.0.1:3306",
        description="MariaDB/MySQL server (SQLAlchemy URL without database); one database per service",
    )
    database_prefix: str = Field(default="devcloud_", pattern=r"^[a-z][a-z0-9_]*$")
    transport_url: str = Field(default="rabbit://guest:guest@127.0.0.1:5672/", description="RabbitMQ for RPC")
    compute_hosts: int = Field(default=2, ge=1, le=8, description="Fake nova-compute hosts")
    heat: bool = Field(
        default=False,
        description="Also run Heat (orchestration API and engine): the peer bench/plans.py measures plans against",
    )
    admin_password: SecretStr = Field(default=SecretStr("devcloud-admin"))
    demo_password: SecretStr = Field(default=SecretStr("devcloud-demo"))
    service_password: SecretStr = Field(default=SecretStr("devcloud-service"))
    clouds_yaml: Path = Field(
        default_factory=lambda: _xdg("XDG_CONFIG_HOME", ".config") / "openstack" / "clouds.yaml",
        description="clouds.yaml that receives the devcloud and devcloud-admin entries",
    )
    cloud_name: str = Field(default="devcloud", pattern=r"^[A-Za-z0-9_-]+$")
    start_timeout: float = Field(default=180.0, gt=0, description="Seconds a service may take to become healthy")

    @field_validator("database_url")
    @classmethod
    def _mysql_only(cls, value: str) -> str:
        if not value.startswith(("mysql+pymysql://", "mariadb+pymysql://")):
            raise ValueError(
                "must be a MariaDB/MySQL URL such as mysql+pymysql://root@127.0.0.1:3306 "
                "(Neutron's migrations no longer run on PostgreSQL)"
            )
        return value.rstrip("/")

    def port(self, which: Port) -> int:
        return self.port_base + int(which)

    def url(self, which: Port) -> str:
        return f"http://127.0.0.1:{self.port(which)}"

    def db(self, name: str) -> str:
        return f"{self.database_url}/{self.database_prefix}{name}?charset=utf8"

    @property
    def auth_url(self) -> str:
        return f"{self.url(Port.KEYSTONE)}/v3"

    @property
    def etc(self) -> Path:
        return self.home / "etc"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def compute_host(self, index: int) -> str:
        return f"{self.cloud_name}-compute{index + 1}"
