"""Errors a request earns, in OpenAI's error shape."""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        """OpenAI's error ``type`` for the status."""
        if self.status in (401, 403):
            return "authentication_error"
        if self.status == 404:
            return "not_found_error"
        if self.status in (429, 503):
            return "server_overloaded"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict:
        """The JSON body of the response."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 about one field of the request."""
    return ApiError(400, message, param, "invalid_value" if param else None)
