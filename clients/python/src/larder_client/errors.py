"""Exceptions raised by :class:`larder_client.Client`.

Every exception derives from :class:`LarderError`. Answers of the server that carry the
contract's error body (``{"error": {"code": ..., "message": ...}}``) raise :class:`ApiError`, or
the subclass named after its code (``NotFound`` for ``not_found``, ...), so callers may catch
either. Failures to reach the server raise :class:`LarderConnectionError` (also a builtin
``ConnectionError``), or :class:`LarderTimeout` (also a builtin ``TimeoutError``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "LarderError",
    "ApiError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "UnknownField",
    "DimensionMismatch",
    "NonFinite",
    "TooLarge",
    "Unauthorized",
    "Forbidden",
    "Unavailable",
    "InternalError",
    "LarderConnectionError",
    "LarderTimeout",
    "ProtocolError",
]


class LarderError(Exception):
    """Base class of every error this package raises."""


class ApiError(LarderError):
    """The server answered with an error status (4xx/5xx).

    Attributes:
        status: the HTTP status (``404``).
        code: the contract's snake_case error code (``"not_found"``); for an answer without the
            contract's error body (a proxy's HTML page, say) ``"http_<status>"``.
        message: the server's human sentence.
        headers: the response headers (a dict with lower-case names).
        body: the raw response body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Optional[Mapping[str, str]] = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers: Dict[str, str] = dict(headers or {})
        self.body = body

    def __reduce__(self):  # keep the attributes when pickled (multiprocessing)
        return (type(self), (self.status, self.code, self.message, self.headers, self.body))


class BadRequest(ApiError):
    """``bad_request``: a malformed request, a bad name, an unknown item id, ..."""


class Conflict(BadRequest):
    """``409`` with code ``bad_request``: e.g. changing a field's dim or dtype without force."""


class NotFound(ApiError):
    """``not_found``: unknown namespace, entity, category, item or route."""


class UnknownField(ApiError):
    """``unknown_field``: the namespace has no such field."""


class DimensionMismatch(ApiError):
    """``dimension_mismatch``: a vector's length is not the field's dim."""


class NonFinite(ApiError):
    """``non_finite``: a value is NaN, infinite or outside the f32 range."""


class TooLarge(ApiError):
    """``too_large`` (413): too many keys or entities, or too big a body or entity."""


class Unauthorized(ApiError):
    """``unauthorized`` (401): no token, or an unknown one."""


class Forbidden(ApiError):
    """``forbidden`` (403): a read-only token tried to write."""


class Unavailable(ApiError):
    """``unavailable`` (503): the store (or the backup) does not answer."""


class InternalError(ApiError):
    """``internal`` (500): a server bug or corrupt data."""


class LarderConnectionError(LarderError, ConnectionError):
    """The server could not be reached, or dropped the connection before answering."""


class LarderTimeout(LarderConnectionError, TimeoutError):
    """The server did not answer within the client's timeout."""


class ProtocolError(LarderError):
    """The server answered something this client cannot read (not the expected format)."""


_BY_CODE: Dict[str, Type[ApiError]] = {
    "bad_request": BadRequest,
    "not_found": NotFound,
    "unknown_field": UnknownField,
    "dimension_mismatch": DimensionMismatch,
    "non_finite": NonFinite,
    "too_large": TooLarge,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "unavailable": Unavailable,
    "internal": InternalError,
}


def api_error(status: int, headers: Mapping[str, str], body: bytes) -> ApiError:
    """The exception for an error answer: its code and message from the contract's error
    body when there is one, else ``http_<status>`` and the start of the body."""
    code: Optional[str] = None
    message: Optional[str] = None
    try:
        parsed: Any = json.loads(body.decode("utf-8"))
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code = error["code"]
            message = str(error.get("message", ""))
    except (UnicodeDecodeError, ValueError):
        pass
    if code is None:
        code = f"http_{status}"
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or "(empty body)"
    cls = _BY_CODE.get(code, ApiError)
    if code == "bad_request" and status == 409:
        cls = Conflict
    return cls(status, code, message or "", headers, body)
