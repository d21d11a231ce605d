"""The error services raise. No DRF here: services, pages and commands import it, and the
management API's handler (core.exceptions) turns it into the API's one error shape."""

HTTP_BAD_REQUEST = 400


class ServiceError(ValueError):
    """A refused service call: nothing was written; the message is safe to show.

    `code` is stable for API clients and `status_code` the HTTP status the management API answers
    with; subclasses set their defaults.
    """

    code = "invalid"
    status_code = HTTP_BAD_REQUEST

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
