"""Errors of the outbound actions. What the caller is told (the CLI's exit codes of CONTRACT
§6) is the caller's to decide; the classes say only whose fault it is:

    ActionError                    the action failed
    ├── RequestError               the request itself is wrong:
    │   ├── NotFoundError            no such server / network / flavor / backend
    │   ├── InvalidInputError        a bad value (bad CIDR, NIC index, ...)
    │   └── InvalidActionError       not one of ACTIONS (reference §e.5)
    ├── DeletedError               the object is deleted
    ├── InUseError                 live servers still have NICs on the network
    ├── BuildingError              the server is still in BUILD; only DESTROY is allowed
    ├── BackendUnavailableError    the backend is offline (or drained, for a new server)
    └── ClusterError               RAPI refused or failed (wraps a RapiError), or a job failed
        └── JobFailedError         a job we waited for ended in error or canceled

Messages are one line and never carry a secret: :func:`scrub` removes given secrets from any
text that came back from a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dispatcher.oneline import one_line
from dispatcher.rapi.errors import RapiError

_MAX_MESSAGE = 400


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class ActionError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, _MAX_MESSAGE))
        self.message = one_line(message, _MAX_MESSAGE)


class RequestError(ActionError):
    pass


class NotFoundError(RequestError):
    pass


class InvalidInputError(RequestError):
    pass


class InvalidActionError(RequestError):
    pass


class DeletedError(ActionError):
    pass


class BuildingError(ActionError):
    pass


class InUseError(ActionError):
    pass


class BackendUnavailableError(ActionError):
    pass


class ClusterError(ActionError):
    """A RAPI call failed; ``cause`` is the RapiError (None for a failed job)."""

    def __init__(
        self,
        message: str,
        *,
        cause: RapiError | None = None,
        job_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.job_id = job_id

    @classmethod
    def from_rapi(
        cls,
        exc: RapiError,
        cluster: str,
        doing: str,
        *,
        secrets: Iterable[str | None] = (),
    ) -> ClusterError:
        hint = ""
        if exc.transient and exc.method not in (None, "GET"):
            hint = " (no answer: the job may still have been created)"
        text = scrub(f"{doing} on {cluster} failed: {exc}{hint}", secrets)
        return cls(text, cause=exc)


class JobFailedError(ClusterError):
    def __init__(self, message: str, *, job_id: int, status: dict[str, Any]) -> None:
        super().__init__(message, job_id=job_id)
        self.status = status
