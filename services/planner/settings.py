from typing import ClassVar

from pydantic import Field

from shared.config import ServiceSettings


class PlannerSettings(ServiceSettings):
    service_name: ClassVar[str] = "planner"
    default_http_port: ClassVar[int] = 8081
    step_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A step not finished after this long fails with what was last seen"
    )
    timeout_check_seconds: float = Field(default=5.0, gt=0, description="How often overdue steps are looked for")
