from typing import ClassVar

from shared.config import ServiceSettings


class ComputeSettings(ServiceSettings):
    service_name: ClassVar[str] = "compute"
    default_http_port: ClassVar[int] = 8082
    cloud: str = "devcloud"
