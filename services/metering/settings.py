from typing import ClassVar

from shared.config import ServiceSettings


class MeteringSettings(ServiceSettings):
    service_name: ClassVar[str] = "metering"
    default_http_port: ClassVar[int] = 8086
