from typing import ClassVar

from shared.config import ServiceSettings


class HybridSettings(ServiceSettings):
    service_name: ClassVar[str] = "hybrid"
    default_http_port: ClassVar[int] = 8087
    cloud: str = "devcloud"
