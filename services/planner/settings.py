from typing import ClassVar

from pydantic import Field

from shared.config import ServiceSettings
from shared.limits import LimitSettings


class PlannerSettings(ServiceSettings, LimitSettings):
    service_name: ClassVar[str] = "planner"
    default_http_port: ClassVar[int] = 8081
    step_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A step not finished after this long fails with what was last seen"
    )
    step_reask_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A step in flight nothing was heard from for this long gets its command again (same dispatch "
        "id; operations are idempotent), at most once per this interval, so a lost event does not wait out "
        "the step timeout",
    )
    timeout_check_seconds: float = Field(default=5.0, gt=0, description="How often overdue steps are looked for")
    # The domain services' read APIs, which previews and the plan checks ask for live cloud state. The
    # defaults are the ports `dcostack up` gives them (services/cli/processes.py DEFAULT_PORTS).
    compute_url: str = Field(default="http://127.0.0.1:8082", description="Base URL of the compute service")
    network_url: str = Field(default="http://127.0.0.1:8083", description="Base URL of the network service")
    storage_url: str = Field(default="http://127.0.0.1:8084", description="Base URL of the storage service")
    domain_timeout_seconds: float = Field(
        default=20.0, gt=0, description="How long a preview waits for a domain service's answer"
    )
    trust_lifetime_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 30,
        description="How long the Keystone trust a run acts through lasts (a resume makes a new one)",
    )
