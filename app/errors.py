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
