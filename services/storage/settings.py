from typing import ClassVar

from shared.config import ServiceSettings


class StorageSettings(ServiceSettings):
    service_name: ClassVar[str] = "storage"
    default_http_port: ClassVar[int] = 8084
    cloud: str = "devcloud"
