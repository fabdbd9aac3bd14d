"""One RapiClient per backend for the length of a command; offline backends are refused.

The factory is injected, so that tests can hand out clients built on ``httpx.MockTransport``;
:func:`client_pool` is what the CLI uses (tests may monkeypatch
:func:`default_client_factory`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

from dispatcher.actions.errors import BackendUnavailableError, ClusterError
from dispatcher.db.models import Backend
from dispatcher.rapi import RapiClient, RapiError
from dispatcher.settings import Settings

T = TypeVar("T")
ClientFactory = Callable[[Backend], RapiClient]


def default_client_factory(settings: Settings) -> ClientFactory:
    def make(backend: Backend) -> RapiClient:
        return RapiClient.from_backend(backend, timeout=settings.rapi_timeout)

    return make


def client_pool(settings: Settings) -> ClientPool:
    return ClientPool(default_client_factory(settings))


def ensure_online(backend: Backend) -> None:
    if backend.offline:
        raise BackendUnavailableError(
            f"backend {backend.id} ({backend.clustername}) is offline: "
            "bring it online with `dispatcher backend modify "
            f"{backend.id} --online` first"
        )


class ClientPool:
    """Clients by backend id, built on first use and closed together."""

    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
        self._clients: dict[int, RapiClient] = {}

    def get(self, backend: Backend) -> RapiClient:
        ensure_online(backend)
        client = self._clients.get(backend.id)
        if client is None:
            client = self._clients[backend.id] = self._factory(backend)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def call(backend: Backend, doing: str, awaitable: Awaitable[T]) -> T:
    """Await one RAPI call; a RapiError becomes a one-line ClusterError naming the cluster."""
    try:
        return await awaitable
    except RapiError as exc:
        raise ClusterError.from_rapi(exc, backend.clustername, doing) from exc
