from typing import ClassVar

from shared.config import CloudExecutorSettings


class NetworkSettings(CloudExecutorSettings):
    service_name: ClassVar[str] = "network"
    default_http_port: ClassVar[int] = 8083
