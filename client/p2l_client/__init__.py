"""Python client and `p2l` command for the P2L transfer-learning service."""

from p2l_client.client import Client, Event
from p2l_client.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    JobFailed,
    NotFound,
    P2LConnectionError,
    P2LError,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    Unauthorized,
)

__all__ = [
    "BadRequest",
    "Client",
    "Conflict",
    "Event",
    "InsufficientStorage",
    "InvalidInput",
    "JobFailed",
    "NotFound",
    "P2LConnectionError",
    "P2LError",
    "ServerError",
    "ServiceUnavailable",
    "TooLarge",
    "Unauthorized",
]
