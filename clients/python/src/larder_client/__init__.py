"""Python client of Larder's HTTP API.

    >>> import larder_client
    >>> c = larder_client.Client("http://127.0.0.1:7878", token="change-me")
    >>> r = c.lookup("users", ["user:42", "user:7"])
    >>> r["fields"]["clip"].shape, r["present"]["clip"]

Errors: :class:`ApiError` (``.status``, ``.code``, ``.message``) and its per-code subclasses for
error answers, :class:`LarderConnectionError` when the server cannot be reached.
"""

from . import safetensors
from .client import Client, __version__, dequantize
from .errors import (
    ApiError,
    BadRequest,
    Conflict,
    DimensionMismatch,
    Forbidden,
    InternalError,
    LarderConnectionError,
    LarderError,
    LarderTimeout,
    NonFinite,
    NotFound,
    ProtocolError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownField,
)

__all__ = [
    "Client",
    "dequantize",
    "safetensors",
    "__version__",
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
