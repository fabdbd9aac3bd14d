"""Waiting for Ganeti jobs: :func:`wait_for_job` returns a job's final status, whatever it is;
:func:`wait_for_success` raises :class:`JobFailedError` unless it succeeded."""

from __future__ import annotations

from typing import Any

from dispatcher.actions.errors import ClusterError, JobFailedError
from dispatcher.db.models import Backend
from dispatcher.rapi import RapiClient, RapiError

DEFAULT_TIMEOUT = 600.0


async def wait_for_job(
    client: RapiClient,
    backend: Backend,
    job_id: int,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- an overall budget
) -> dict[str, Any]:
    """The job's full status once it is final (``success``, ``error`` or ``canceled``)."""
    try:
        return await client.wait_for_job(job_id, timeout=timeout)
    except RapiError as exc:
        raise ClusterError.from_rapi(exc, backend.clustername, f"waiting for job {job_id}") from exc


def job_error(status: dict[str, Any]) -> str:
    """Ganeti's reason for a failed job, from ``opresult`` (``[Class, [message, code]]``)."""
    for result in status.get("opresult") or []:
        if isinstance(result, list) and len(result) == 2 and isinstance(result[0], str):
            detail = result[1]
            if isinstance(detail, list) and detail:
                return f"{result[0]}: {detail[0]}"
            return f"{result[0]}: {detail}"
        if isinstance(result, str):
            return result
    return "no reason given"


async def wait_for_success(
    client: RapiClient,
    backend: Backend,
    job_id: int,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 -- an overall budget
) -> dict[str, Any]:
    status = await wait_for_job(client, backend, job_id, timeout=timeout)
    if status.get("status") != "success":
        summary = ",".join(status.get("summary") or []) or "job"
        raise JobFailedError(
            f"job {job_id} ({summary}) on {backend.clustername} ended {status.get('status')}: "
            f"{job_error(status)}",
            job_id=job_id,
            status=status,
        )
    return status
