"""Async client for the Ganeti Remote API v2.

``RapiClient`` is the client; ``dispatcher.rapi.errors`` documents the error tree.
"""

from dispatcher.rapi.client import (
    FINAL_STATUSES,
    BackendLike,
    Depends,
    JobStatus,
    RapiClient,
    RebootType,
    SoftwareVersion,
    parse_software_version,
)
from dispatcher.rapi.errors import (
    RapiAuthError,
    RapiBadRequest,
    RapiCertificateError,
    RapiConnectionError,
    RapiError,
    RapiForbidden,
    RapiNotFound,
    RapiResponseError,
    RapiServerError,
    RapiTimeout,
    RapiUnauthorized,
    RapiUnsupported,
)

__all__ = [
    "FINAL_STATUSES",
    "BackendLike",
    "Depends",
    "JobStatus",
    "RapiAuthError",
    "RapiBadRequest",
    "RapiCertificateError",
    "RapiClient",
    "RapiConnectionError",
    "RapiError",
    "RapiForbidden",
    "RapiNotFound",
    "RapiResponseError",
    "RapiServerError",
    "RapiTimeout",
    "RapiUnauthorized",
    "RapiUnsupported",
    "RebootType",
    "SoftwareVersion",
    "parse_software_version",
]
