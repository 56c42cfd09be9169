from typing import ClassVar

from shared.config import ServiceSettings


class PlannerSettings(ServiceSettings):
    service_name: ClassVar[str] = "planner"
    default_http_port: ClassVar[int] = 8081
