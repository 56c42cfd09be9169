from typing import ClassVar

from shared.config import ServiceSettings


class NetworkSettings(ServiceSettings):
    service_name: ClassVar[str] = "network"
    default_http_port: ClassVar[int] = 8083
    cloud: str = "devcloud"
