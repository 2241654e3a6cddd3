"""Domain errors, free of web imports; app.main renders them as RFC 9457 problem+json."""

from typing import Any


class ServiceError(Exception):
    """Base of errors a client caused; ``status`` is the HTTP status they map to."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
        self.headers: dict[str, str] = {}  # sent with the response (e.g. Retry-After)


class NotFound(ServiceError):
    """An id that names nothing."""

    status = 404
    title = "Not found"


class InvalidInput(ServiceError):
    """Well-formed request whose content cannot be used (bad archive, wrong weights...)."""

    status = 422
    title = "Unprocessable content"


class TooLarge(ServiceError):
    """Input above a configured size limit."""

    status = 413
    title = "Content too large"


class Conflict(ServiceError):
    """The request clashes with the current state (e.g. deleting something in use)."""

    status = 409
    title = "Conflict"


class StorageFull(ServiceError):
    """Too little free space to write what the request would (answered before writing it)."""

    status = 507
    title = "Insufficient storage"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = "60"  # as for a full disk met while writing


class Unauthorized(ServiceError):
    """No key, or a key that names no live API key, where one is needed."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["WWW-Authenticate"] = "ApiKey"


class Forbidden(ServiceError):
    """A key whose role may not do what it asks (in a project it may see)."""

    status = 403
    title = "Forbidden"


class QuotaExceeded(ServiceError):
    """A project's quota or a key's rate would be exceeded; the answer names the quota,
    the usage and the limit. 429 with Retry-After where waiting helps (a job ending, the
    next minute); another 4xx where it cannot (422: a job longer than any allowed)."""

    status = 429
    title = "Too many requests"

    def __init__(
        self,
        detail: str,
        *,
        quota: str,
        usage: float,
        limit: float,
        retry_after: int | None = None,
        status: int = 429,
    ) -> None:
        super().__init__(detail, quota=quota, usage=usage, limit=limit)
        self.status = status
        if status == 422:
            self.title = "Unprocessable content"
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)


class ServiceUnavailable(ServiceError):
    """A dependency (the database) cannot be reached: retry soon."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 5, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = str(retry_after)
