"""Errors of the outbound actions, each with the exit code the CLI gives it (CONTRACT §6).

    ActionError                    exit_code 1 unless noted
    ├── NotFoundError              2: no such server / network / flavor / backend
    ├── InvalidInputError          2: the request itself is wrong (bad CIDR, NIC index, ...)
    ├── InvalidActionError         2: not one of ACTIONS (reference §e.5)
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
from typing import Any, ClassVar

from dispatcher.rapi.errors import RapiError

EXIT_FAILED, EXIT_USAGE = 1, 2
_MAX_MESSAGE = 400


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class ActionError(Exception):
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))
        self.message = one_line(message)


class NotFoundError(ActionError):
    exit_code = EXIT_USAGE


class InvalidInputError(ActionError):
    exit_code = EXIT_USAGE


class InvalidActionError(ActionError):
    exit_code = EXIT_USAGE


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
