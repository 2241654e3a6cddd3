"""Python client and `p2l` command for the P2L transfer-learning service."""

from p2l_client.client import Client, Event
from p2l_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    JobFailed,
    NotFound,
    P2LConnectionError,
    P2LError,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)

__all__ = [
    "BadRequest",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "InsufficientStorage",
    "InvalidInput",
    "JobFailed",
    "NotFound",
    "P2LConnectionError",
    "P2LError",
    "ServerError",
    "ServiceUnavailable",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
]
