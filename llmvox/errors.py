"""One exception type for problems a user can fix (bad paths, bad files, bad input, a full server).

The CLI prints it as a single line; the server answers it as JSON in OpenAI's error shape,
{"error": {"message", "type", "param", "code"}}, with its HTTP `status` (400 when it names none).
"""

from __future__ import annotations

from typing import Any

STATUS_CODES = {400: "invalid_request", 404: "not_found", 409: "conflict", 413: "input_too_large",
                422: "no_speech", 429: "too_many_requests", 502: "upstream_failed", 503: "unavailable"}


class LLMVoXError(Exception):
    """A user-facing error: the message says what is wrong and what to change.

    `status` is the HTTP status a server answers with (None: not said, answered as 400), `code` a
    stable machine-readable name, `param` the request field at fault, `headers` extra response
    headers (Retry-After). Subclasses only set defaults.
    """

    status: int | None = None

    def __init__(self, message: str, status: int | None = None, code: str | None = None, *,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self._code = code
        self.param = param
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        return self.status or 400

    @property
    def code(self) -> str:
        return self.code_for(STATUS_CODES)

    def code_for(self, by_status: dict[int, str], default: str = "error") -> str:
        """The code the error was raised with, else the one `by_status` gives its status (a route's own names)."""
        return self._code or by_status.get(self.http_status, default)

    @property
    def type(self) -> str:
        status = self.http_status
        if status in (401, 403):
            return "authentication_error"
        if status == 429:
            return "rate_limit_error"
        if status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
