"""Python client and `p2l` command for the P2L transfer-learning service."""

from p2l_client.async_client import AsyncClient
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
from p2l_client.retry import RetryPolicy

__all__ = [
    "AsyncClient",
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
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
]
