from typing import ClassVar

from shared.config import ServiceSettings


class MonitorSettings(ServiceSettings):
    service_name: ClassVar[str] = "monitor"
    default_http_port: ClassVar[int] = 8085
