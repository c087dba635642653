"""The Larder HTTP client (standard library ``http.client`` plus numpy)."""

from __future__ import annotations

import http.client
import json
import platform
import socket
import threading
import time
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import quote, urlencode, urlsplit

import numpy as np

from . import safetensors
from .errors import (
    ApiError,
    LarderConnectionError,
    LarderTimeout,
    ProtocolError,
    api_error,
)

__all__ = ["Client", "dequantize"]

__version__ = "0.1.0"

Vector = Union[np.ndarray, Sequence[float]]
#: ``{field: vector}`` of one entity.
EntityFields = Mapping[str, Vector]

_SAFETENSORS = "application/octet-stream"
_JSON = "application/json"


def _segment(name: str) -> str:
    """One percent-encoded path segment (``/``, ``?``, ``#``, spaces and non-ASCII escaped)."""
    if not isinstance(name, str):
        raise TypeError(f"expected a str name, got {type(name).__name__}")
    return quote(name, safe="")


def _vector(value: Vector, where: str) -> List[float]:
    """A 1-D vector as a JSON-ready list of floats, refusing NaN/Inf before anything is sent
    (JSON has no NaN; the server would only see invalid JSON)."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D vector, got shape {array.shape}")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{where}: expected numbers, got dtype {array.dtype}")
    # float64 holds every f32/f16/int value exactly, so the server parses back the same f32.
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: values must be finite (no NaN or infinity)")
    return array.tolist()


def dequantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 values of a stored-``i8`` field: ``scale[row] * q[row, i]`` (what the server
    answers for ``dtype="f32"``)."""
    return np.asarray(scale, dtype=np.float32)[:, None] * np.asarray(values).astype(np.float32)


class Client:
    """A client of one Larder server.

    ``Client("http://127.0.0.1:7878", token="...")``. ``url`` may be ``http://`` or
    ``https://`` and may carry a path prefix (a reverse proxy's). ``token`` is sent as
    ``Authorization: Bearer <token>`` on every request. ``timeout`` (seconds) bounds connecting
    and each wait for the server; ``items(wait_ms=...)`` adds its wait to it.

    The client keeps one keep-alive connection per thread, so one instance may be shared by
    threads. ``close()`` (or ``with Client(...) as c:``) closes this thread's connection.

    Errors: an error answer raises :class:`larder_client.ApiError` (or its subclass for the
    code, e.g. ``NotFound``); an unreachable server raises
    :class:`larder_client.LarderConnectionError`; a timeout :class:`larder_client.LarderTimeout`.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url must be http:// or https://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        self.url = url
        self.token = token
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()
        self._user_agent = f"larder-client/{__version__} python/{platform.python_version()}"

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'***' if self.token else None})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's connection (a later request opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ----------------------------------------------------------------- embeddings

    def create_namespace(
        self,
        ns: str,
        fields: Mapping[str, Union[Mapping[str, Any], Tuple[int, str]]],
        *,
        ttl_seconds: Optional[int] = None,
        fallback: Optional[Mapping[str, Vector]] = None,
        max_entity_bytes: Optional[int] = None,
        max_fields: Optional[int] = None,
        force: bool = False,
    ) -> Dict[str, Any]:
        """``PUT /v1/namespaces/{ns}``: create a namespace or add fields to it.

        ``fields`` maps each field name to ``{"dim": 512, "dtype": "f16"}`` or ``(512, "f16")``;
        dtype is ``f32``, ``f16``, ``bf16`` or ``i8``. Fields not named are kept. Changing a
        field's dim or dtype raises ``Conflict`` (409) unless ``force=True``, which drops that
        field's data. ``ttl_seconds`` is set by every call (the server replaces it): ``None``
        means no expiry, so repeat the TTL when adding fields to a namespace that has one.
        Returns the stored schema.
        """
        specs: Dict[str, Dict[str, Any]] = {}
        for name, spec in fields.items():
            if isinstance(spec, Mapping):
                specs[name] = dict(spec)
            else:
                dim, dtype = spec
                specs[name] = {"dim": int(dim), "dtype": str(dtype)}
        body: Dict[str, Any] = {"fields": specs, "ttl_seconds": ttl_seconds}
        if fallback:
            body["fallback"] = {
                name: _vector(v, f"fallback[{name!r}]") for name, v in fallback.items()
            }
        if max_entity_bytes is not None:
            body["max_entity_bytes"] = int(max_entity_bytes)
        if max_fields is not None:
            body["max_fields"] = int(max_fields)
        query = {"force": "true"} if force else None
        return self._json("PUT", f"/v1/namespaces/{_segment(ns)}", body=body, query=query)

    #: ``put_namespace`` is the same call under the verb's name.
    put_namespace = create_namespace

    def namespaces(self) -> List[Dict[str, Any]]:
        """``GET /v1/namespaces``: every namespace with its schema."""
        return self._json("GET", "/v1/namespaces")["namespaces"]

    def namespace(self, ns: str) -> Dict[str, Any]:
        """``GET /v1/namespaces/{ns}``: the schema plus ``entity_count``."""
        return self._json("GET", f"/v1/namespaces/{_segment(ns)}")

    def delete_namespace(self, ns: str) -> None:
        """``DELETE /v1/namespaces/{ns}``: removed in the background (202)."""
        self._request("DELETE", f"/v1/namespaces/{_segment(ns)}")

    def stats(self, ns: str) -> Dict[str, Any]:
        """``GET /v1/namespaces/{ns}/stats``."""
        return self._json("GET", f"/v1/namespaces/{_segment(ns)}/stats")

    def put_alias(self, alias: str, namespace: str) -> Dict[str, Any]:
        """``PUT /v1/aliases/{alias}``: point ``alias`` at ``namespace`` (e.g. ``users@v2``)."""
        return self._json("PUT", f"/v1/aliases/{_segment(alias)}", body={"namespace": namespace})

    def alias(self, alias: str) -> Dict[str, Any]:
        """``GET /v1/aliases/{alias}``."""
        return self._json("GET", f"/v1/aliases/{_segment(alias)}")

    def upsert(
        self,
        ns: str,
        entities: Union[Mapping[str, EntityFields], Iterable[Tuple[str, EntityFields]]],
    ) -> int:
        """``POST /v1/namespaces/{ns}/entities``: write ``{key: {field: vector}}``.

        Vectors may be numpy arrays (any float or int dtype) or lists of numbers. Fields are
        merged into each entity; fields not named are left alone. The server validates the
        batch whole: if one entity is bad, nothing is written. NaN/Inf raise ``ValueError``
        before anything is sent. Returns the number of entities upserted.
        """
        items = entities.items() if isinstance(entities, Mapping) else entities
        body_entities = []
        for key, fields in items:
            if not isinstance(key, str):
                raise TypeError(f"entity keys must be str, got {type(key).__name__}: {key!r}")
            body_entities.append(
                {
                    "key": key,
                    "fields": {
                        name: _vector(v, f"entity {key!r} field {name!r}")
                        for name, v in fields.items()
                    },
                }
            )
        answer = self._json(
            "POST", f"/v1/namespaces/{_segment(ns)}/entities", body={"entities": body_entities}
        )
        return int(answer["upserted"])

    def get_entity(self, ns: str, key: str) -> Dict[str, np.ndarray]:
        """``GET /v1/namespaces/{ns}/entities/{key}``: ``{field: float32 array}`` of the
        fields the entity has. An absent key raises ``NotFound``."""
        answer = self._json("GET", f"/v1/namespaces/{_segment(ns)}/entities/{_segment(key)}")
        return {
            name: np.asarray(values, dtype=np.float32)
            for name, values in answer["fields"].items()
            if values is not None
        }

    def delete_entity(self, ns: str, key: str) -> None:
        """``DELETE /v1/namespaces/{ns}/entities/{key}`` (also fine when absent)."""
        self._request("DELETE", f"/v1/namespaces/{_segment(ns)}/entities/{_segment(key)}")

    def lookup(
        self,
        ns: str,
        keys: Sequence[str],
        fields: Optional[Sequence[str]] = None,
        dtype: str = "f32",
    ) -> Dict[str, Any]:
        """``POST /v1/namespaces/{ns}/lookup``, answered as safetensors.

        Returns ``{"fields": {name: array[n_keys, dim]}, "present": {name: bool[n_keys]},
        "degraded": bool, "scale": {name: float32[n_keys]}, "cached": int | None}``; rows in
        the order of ``keys`` (duplicates answered in place), zeros where ``present`` is False.
        ``fields=None`` means every field of the namespace; the answer lists fields in the
        order asked.

        ``dtype="f32"`` (default) gives float32 arrays. ``dtype="stored"`` gives each field as
        stored: float16 for ``f16``, int8 for ``i8`` (with its per-row ``scale``; see
        :func:`dequantize`), float32 for ``f32``, and float32 for ``bf16`` (numpy has no
        bfloat16; the widening is exact). ``scale`` is empty unless an ``i8`` field is
        answered stored.

        In degraded mode (store down or slow) ``degraded`` is True, the arrays hold the
        namespace's fallback vectors (else zeros) and every ``present`` row is False.
        """
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of str, not one str")
        keys = list(keys)
        body: Dict[str, Any] = {"keys": keys, "dtype": dtype}
        if fields is not None:
            if isinstance(fields, str):
                raise TypeError("fields must be a sequence of str, not one str")
            fields = list(fields)
            body["fields"] = fields
        status, headers, data = self._request(
            "POST",
            f"/v1/namespaces/{_segment(ns)}/lookup",
            body=body,
            accept=_SAFETENSORS,
        )
        content_type = headers.get("content-type", "")
        if not content_type.startswith(_SAFETENSORS):
            raise ProtocolError(
                f"lookup answered {content_type or 'no content type'} instead of {_SAFETENSORS}"
            )
        tensors, metadata = safetensors.load(data)

        names = fields
        if names is None:
            names = sorted(n for n in tensors if "." not in n)
        result_fields: Dict[str, np.ndarray] = {}
        present: Dict[str, np.ndarray] = {}
        scale: Dict[str, np.ndarray] = {}
        n = len(keys)
        for name in names:
            try:
                values = tensors[name]
                flags = tensors[name + ".present"]
            except KeyError as e:
                raise ProtocolError(f"lookup answer has no tensor {e.args[0]!r}") from None
            if values.ndim != 2 or values.shape[0] != n or flags.shape != (n,):
                raise ProtocolError(
                    f"lookup answer for field {name!r} has shapes {values.shape} and {flags.shape} "
                    f"for {n} keys"
                )
            result_fields[name] = values
            present[name] = flags.astype(bool)
            if name + ".scale" in tensors:
                scale[name] = tensors[name + ".scale"]
        degraded_text = metadata.get("degraded", "false")
        degraded = degraded_text == "true" or headers.get("x-larder-degraded") == "1"
        cached = metadata.get("cached")
        return {
            "fields": result_fields,
            "present": present,
            "degraded": degraded,
            "scale": scale,
            "cached": int(cached) if cached is not None else None,
        }

    # ----------------------------------------------------------------- categories

    def categories(self) -> List[Dict[str, Any]]:
        """``GET /v1/categories``: ``[{"name", "status", "pool_size", "evaluated", ...}]``."""
        return self._json("GET", "/v1/categories")["categories"]

    def register_category(
        self,
        category: str,
        description: Optional[str] = None,
        locale: Optional[str] = None,
    ) -> Dict[str, Any]:
        """``PUT /v1/categories/{category}``: register a category; generation is queued."""
        body: Dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if locale is not None:
            body["locale"] = locale
        return self._json("PUT", f"/v1/categories/{_segment(category)}", body=body)

    def items(
        self,
        category: str,
        limit: int = 10,
        explore: bool = True,
        wait_ms: Optional[int] = None,
    ) -> Dict[str, Any]:
        """``GET /v1/categories/{category}/items``.

        Returns the answer as a dict: ``{"category", "status": "ready", "items": [{"id",
        "text", "score"}, ...]}``, or ``{"category", "status": "pending", "items": []}`` while
        the category has no items yet (HTTP 202). ``explore=False`` orders by posterior mean
        (deterministic); ``explore=True`` by a Thompson-sampling draw. ``wait_ms`` (at most
        30000) lets the server wait that long for the first items.
        """
        query: Dict[str, str] = {"limit": str(int(limit)), "explore": "true" if explore else "false"}
        timeout = self.timeout
        if wait_ms is not None:
            query["wait_ms"] = str(int(wait_ms))
            timeout += wait_ms / 1000.0
        return self._json(
            "GET", f"/v1/categories/{_segment(category)}/items", query=query, timeout=timeout
        )

    def wait_items(
        self,
        category: str,
        limit: int = 10,
        explore: bool = True,
        timeout: float = 60.0,
    ) -> Dict[str, Any]:
        """:meth:`items` until the category is ready, for at most ``timeout`` seconds (the
        server waits for announcements, so this does not busy-poll). Returns the last answer,
        which is still ``pending`` if the time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            answer = self.items(category, limit, explore, wait_ms=max(0, min(left_ms, 30_000)))
            if answer.get("status") == "ready" or left_ms <= 0:
                return answer
            if time.monotonic() < deadline:
                time.sleep(0.05)

    def item(self, category: str, item_id: str) -> Dict[str, Any]:
        """``GET /v1/categories/{category}/items/{id}``: provenance, evaluations, feedback
        counts, score and status."""
        return self._json(
            "GET", f"/v1/categories/{_segment(category)}/items/{_segment(item_id)}"
        )

    def feedback(self, category: str, events: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """``POST /v1/categories/{category}/feedback``.

        ``events``: ``[{"item_id": "...", "event": "impression" | "select", "position": 0}]``.
        Returns ``{"accepted": n}``. An unknown item id raises ``BadRequest`` and nothing of
        the request is recorded.
        """
        if isinstance(events, Mapping):
            events = [events]
        return self._json(
            "POST",
            f"/v1/categories/{_segment(category)}/feedback",
            body={"events": [dict(e) for e in events]},
        )

    def refresh(self, category: str) -> Dict[str, Any]:
        """``POST /v1/categories/{category}/refresh``: queue generation and evaluation."""
        return self._json("POST", f"/v1/categories/{_segment(category)}/refresh")

    # ----------------------------------------------------------------- operations

    def healthz(self) -> Dict[str, Any]:
        """``GET /healthz``."""
        return self._json("GET", "/healthz")

    def readyz(self) -> Dict[str, Any]:
        """``GET /readyz``; raises ``Unavailable`` (503) when the store does not answer."""
        return self._json("GET", "/readyz")

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (False when not ready or unreachable)."""
        try:
            self._request("GET", "/readyz", timeout=min(self.timeout, 5.0))
            return True
        except (ApiError, LarderConnectionError):
            return False

    # ----------------------------------------------------------------- transport

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        status, headers, data = self._request(
            method, path, body=body, query=query, timeout=timeout
        )
        if not data:
            return {}
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(
                f"{method} {path} answered {status} with a body that is not JSON: {e}"
            ) from None

    def _connection(self, timeout: float) -> Tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        self._local.conn = conn
        return conn, False

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Optional[Mapping[str, str]] = None,
        accept: str = _JSON,
        timeout: Optional[float] = None,
    ) -> Tuple[int, Dict[str, str], bytearray]:
        """Send one request; returns (status, lower-case headers, body) of a 2xx/3xx answer
        and raises for anything else."""
        target = self._prefix + path
        if query:
            target += "?" + urlencode(query)
        headers = {"Accept": accept, "User-Agent": self._user_agent}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        payload: Optional[bytes] = None
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = _JSON
        elif method in ("POST", "PUT"):
            payload = b""
        timeout = self.timeout if timeout is None else timeout
        where = f"{method} {self._scheme}://{self._host}{':' + str(self._port) if self._port else ''}{target}"

        for attempt in (0, 1):
            conn, reused = self._connection(timeout)
            sent = False
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                sent = True
                data = _read_body(response)
                status = response.status
                response_headers = {k.lower(): v for k, v in response.getheaders()}
                if response.will_close:
                    self.close()
            except socket.timeout:
                self.close()
                raise LarderTimeout(f"{where}: no answer within {timeout:g} s") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                # A kept-alive connection the server closed meanwhile: send once more on a
                # new one, as long as no answer had started (so nothing was processed twice).
                if reused and not sent and attempt == 0:
                    continue
                raise LarderConnectionError(f"{where}: connection lost: {e}") from None
            except OSError as e:
                self.close()
                raise LarderConnectionError(f"{where}: cannot connect: {e}") from None
            except http.client.HTTPException as e:
                self.close()
                raise ProtocolError(f"{where}: invalid HTTP answer: {e!r}") from None
            break

        if status >= 400:
            raise api_error(status, response_headers, bytes(data))
        return status, response_headers, data


def _read_body(response: http.client.HTTPResponse) -> bytearray:
    """The whole body into one bytearray (so numpy views of it are writable), without the
    extra copy of ``read()`` when the length is known."""
    length = response.getheader("content-length")
    if length is not None and response.chunked is False:
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size >= 0:
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = response.readinto(view[got:])
                if not n:
                    raise http.client.IncompleteRead(bytes(buf[:got]), size - got)
                got += n
            return buf
    return bytearray(response.read())
