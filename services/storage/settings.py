from typing import ClassVar

from shared.config import CloudExecutorSettings


class StorageSettings(CloudExecutorSettings):
    service_name: ClassVar[str] = "storage"
    default_http_port: ClassVar[int] = 8084
