from typing import ClassVar

from shared.config import CloudExecutorSettings


class ComputeSettings(CloudExecutorSettings):
    service_name: ClassVar[str] = "compute"
    default_http_port: ClassVar[int] = 8082
