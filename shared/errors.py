"""The error base class: every expected failure says its HTTP status, whether a retry can help, and
what the user should do."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DcostackError(Exception):
    """Base of every error DCOSTACK raises on purpose.

    ``status_code`` is what the HTTP API answers; ``retriable`` tells the bus whether to retry the
    handler with backoff (True) or send the event to the dead-letter topic (False).
    """

    status_code: int = 500
    retriable: bool = False

    def __init__(self, detail: str, *, field: str | None = None, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        if self.context:
            body["context"] = {k: str(v) for k, v in self.context.items()}
        return body


class NotFound(DcostackError):
    status_code = 404


class Conflict(DcostackError):
    status_code = 409


class InvalidInput(DcostackError):
    status_code = 422


class NotImplementedYet(DcostackError):
    """A capability that a later release delivers; answers 501 and names what is missing."""

    status_code = 501


class DependencyUnavailable(DcostackError):
    """PostgreSQL, Kafka or a cloud API cannot be reached right now; retrying may help."""

    status_code = 503
    retriable = True


class FieldError(BaseModel):
    """One invalid value: where it is and what is allowed."""

    path: str = Field(
        description="Where the value is: a request part and field (body.count, query.limit, header.X-Project-Id) "
        "or, for a plan document, its JSON path ($.networks[0].cidr)"
    )
    message: str = Field(description="What is wrong and what is allowed")
    type: str | None = Field(default=None, description="The kind of check that failed (e.g. greater_than_equal)")
    available: list[str] | None = Field(default=None, description="For a name the cloud lacks: the names it has")


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer of every DCOSTACK API (:meth:`DcostackError.to_dict`)."""

    error: str = Field(description="The error's name, e.g. PlanNotFound, InvalidInput, Unauthenticated")
    detail: str = Field(description="What went wrong and what to do about it")
    field: str | None = Field(default=None, description="The request field or header at fault, when there is one")
    context: dict[str, str] | None = Field(default=None, description="Ids and values the error is about")
    errors: list[FieldError] | None = Field(default=None, description="Every invalid value, for a 422")
