from typing import ClassVar

from pydantic import Field, field_validator

from shared.config import CloudExecutorSettings


class ComputeSettings(CloudExecutorSettings):
    service_name: ClassVar[str] = "compute"
    default_http_port: ClassVar[int] = 8082
    capacity_cloud: str | None = Field(
        default=None,
        description=(
            "clouds.yaml entry with an admin credential for reading host capacity (Placement, hypervisors); "
            "unset: previews report that the capacity check was not run"
        ),
    )

    @field_validator("capacity_cloud")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None
