"""Outbound actions: what the dispatcher asks Ganeti to do, over RAPI, with the database
bookkeeping around each request (module per noun: servers, networks, resources, inventory,
jobs; clients hands out one RapiClient per backend, errors holds the typed failures).

Every function takes an ``AsyncSession`` (opened with ``expire_on_commit=False``, as
:func:`dispatcher.cli.common.session_scope` does) and a :class:`ClientPool` whose factory is
injected, so tests can serve RAPI from an ``httpx.MockTransport``.
"""

from dispatcher.actions.clients import ClientFactory, ClientPool, client_pool
from dispatcher.actions.errors import (
    ActionError,
    BackendUnavailableError,
    BuildingError,
    ClusterError,
    DeletedError,
    InvalidActionError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
)

__all__ = [
    "ActionError",
    "BackendUnavailableError",
    "BuildingError",
    "ClientFactory",
    "ClientPool",
    "ClusterError",
    "DeletedError",
    "InvalidActionError",
    "InvalidInputError",
    "JobFailedError",
    "NotFoundError",
    "client_pool",
]
