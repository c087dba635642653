"""Error answers become ApiError (and its per-code subclasses); an unreachable server a
LarderConnectionError."""

from __future__ import annotations

import socket

import numpy as np
import pytest

import larder_client


@pytest.fixture
def ns(client, ns_name):
    client.create_namespace(ns_name, {"v": (3, "f32"), "h": (2, "f16")})
    return ns_name


def raises(cls, status, code):
    """pytest.raises for an ApiError subclass, checking status, code and message too."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(cls)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            error = self.info.value
            assert isinstance(error, larder_client.ApiError)
            assert isinstance(error, larder_client.LarderError)
            assert (error.status, error.code) == (status, code), error
            assert isinstance(error.message, str) and error.message
            assert code in str(error) and str(status) in str(error)
            return handled

    return Check()


def test_unknown_namespace_is_not_found(client):
    with raises(larder_client.NotFound, 404, "not_found"):
        client.lookup("no-such-namespace", ["k"])
    with raises(larder_client.NotFound, 404, "not_found"):
        client.upsert("no-such-namespace", {"k": {"v": [1, 2, 3]}})
    with raises(larder_client.NotFound, 404, "not_found"):
        client.namespace("no-such-namespace")


def test_dimension_mismatch_rejects_the_whole_batch(client, ns):
    with raises(larder_client.DimensionMismatch, 400, "dimension_mismatch") as e:
        client.upsert(ns, {"good": {"v": [1, 2, 3]}, "bad": {"v": [1, 2, 3, 4]}})
    assert "bad" in e.value.message or "entities[1]" in e.value.message
    r = client.lookup(ns, ["good", "bad"])
    assert not r["present"]["v"].any()  # nothing of the request was written
    assert client.namespace(ns)["entity_count"] == 0


def test_unknown_field(client, ns):
    with raises(larder_client.UnknownField, 400, "unknown_field"):
        client.upsert(ns, {"k": {"nope": [1, 2, 3]}})
    with raises(larder_client.UnknownField, 400, "unknown_field"):
        client.lookup(ns, ["k"], fields=["v", "nope"])


def test_non_finite_values(client, ns):
    # NaN cannot be sent as JSON: the client refuses it before sending anything.
    with pytest.raises(ValueError, match="finite"):
        client.upsert(ns, {"k": {"v": [1.0, float("nan"), 3.0]}})
    with pytest.raises(ValueError, match="finite"):
        client.upsert(ns, {"k": {"v": np.array([1.0, np.inf, 3.0])}})
    # A value outside the f32 range is finite here and infinite as f32: the server refuses it.
    with raises(larder_client.NonFinite, 400, "non_finite"):
        client.upsert(ns, {"k": {"v": [1.0, 1e39, 3.0]}})
    assert not client.lookup(ns, ["k"])["present"]["v"][0]


def test_too_many_entities_and_keys(client, ns):
    with raises(larder_client.TooLarge, 413, "too_large"):
        client.upsert(ns, {f"k{i}": {"v": [0, 0, 0]} for i in range(1001)})
    with raises(larder_client.TooLarge, 413, "too_large"):
        client.lookup(ns, [f"k{i}" for i in range(1001)])
    assert client.namespace(ns)["entity_count"] == 0


def test_schema_change_needs_force(client, ns):
    client.upsert(ns, {"k": {"v": [1, 2, 3], "h": [0.5, 0.25]}})
    with raises(larder_client.Conflict, 409, "bad_request") as e:
        client.create_namespace(ns, {"v": (4, "f32")})
    assert isinstance(e.value, larder_client.BadRequest)
    assert client.namespace(ns)["fields"]["v"] == {"dim": 3, "dtype": "f32"}

    answer = client.create_namespace(ns, {"v": (4, "f32")}, force=True)
    assert answer["fields"]["v"] == {"dim": 4, "dtype": "f32"}
    r = client.lookup(ns, ["k"])
    assert r["fields"]["v"].shape == (1, 4)
    assert not r["present"]["v"][0]  # the redefined field's data was dropped
    assert r["present"]["h"][0]  # the other field kept its data
    np.testing.assert_array_equal(r["fields"]["h"][0], [0.5, 0.25])


def test_bad_names_and_bodies(client):
    with raises(larder_client.BadRequest, 400, "bad_request"):
        client.create_namespace("Bad Name!", {"v": (3, "f32")})
    with raises(larder_client.BadRequest, 400, "bad_request"):
        client.create_namespace("fine-name", {"v": (3, "f128")})
    with raises(larder_client.BadRequest, 400, "bad_request"):
        client.lookup("fine-name", ["k"], dtype="f64")


def test_no_token_and_unknown_token_are_unauthorized(server, anonymous, ns):
    with raises(larder_client.Unauthorized, 401, "unauthorized"):
        anonymous.lookup(ns, ["k"])
    with raises(larder_client.Unauthorized, 401, "unauthorized"):
        anonymous.upsert(ns, {"k": {"v": [1, 2, 3]}})
    with raises(larder_client.Unauthorized, 401, "unauthorized"):
        anonymous.categories()
    stranger = larder_client.Client(server.url, token="not-a-token")
    with raises(larder_client.Unauthorized, 401, "unauthorized"):
        stranger.namespaces()
    # Operations endpoints need no token.
    assert anonymous.healthz() == {"status": "ok"}
    assert anonymous.ready() is True


def test_read_token_writing_is_forbidden(reader, ns):
    with raises(larder_client.Forbidden, 403, "forbidden"):
        reader.upsert(ns, {"k": {"v": [1, 2, 3]}})
    with raises(larder_client.Forbidden, 403, "forbidden"):
        reader.delete_entity(ns, "k")
    with raises(larder_client.Forbidden, 403, "forbidden"):
        reader.register_category("reader may not create this")


def test_unreachable_server_raises_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        c = larder_client.Client(f"http://127.0.0.1:{port}", token="x", timeout=2)
        with pytest.raises(larder_client.LarderConnectionError) as e:
            c.lookup("ns", ["k"])
    assert isinstance(e.value, ConnectionError)
    assert not isinstance(e.value, larder_client.ApiError)
    assert f"127.0.0.1:{port}" in str(e.value)
    assert c.ready() is False


def test_silent_server_raises_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts the connection, never answers
        c = larder_client.Client(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        with pytest.raises(larder_client.LarderTimeout) as e:
            c.healthz()
    assert isinstance(e.value, larder_client.LarderConnectionError)
    assert isinstance(e.value, TimeoutError)


def test_keep_alive_connection_survives_many_requests(client, ns):
    # One connection per thread is reused; requests after errors still work.
    for i in range(50):
        client.upsert(ns, {f"k{i}": {"v": [i, i, i]}})
        if i % 10 == 0:
            with pytest.raises(larder_client.NotFound):
                client.lookup("no-such-namespace", ["k"])
    r = client.lookup(ns, [f"k{i}" for i in range(50)], ["v"])
    np.testing.assert_array_equal(r["fields"]["v"][:, 0], np.arange(50, dtype=np.float32))


class FakeServer:
    """A raw HTTP/1.1 server on a thread: each accepted connection gets ``answers[i]`` (raw
    bytes) for its one request, then is closed without notice (like an idle keep-alive
    connection the server dropped)."""

    def __init__(self, answers):
        import threading

        self.answers = list(answers)
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for answer in self.answers:
            conn, _ = self.sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.split(b"\r\n", 1)[0].decode())
                conn.sendall(answer)

    def close(self):
        self.sock.close()
        self.thread.join(timeout=5)


def http_answer(status, body, content_type="application/json"):
    reason = {200: "OK", 502: "Bad Gateway"}.get(status, "X")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_dropped_keep_alive_connection_is_reopened():
    fake = FakeServer([http_answer(200, b'{"status":"ok"}'), http_answer(200, b'{"status":"ok"}')])
    try:
        c = larder_client.Client(fake.url, timeout=5)
        assert c.healthz() == {"status": "ok"}
        # The server closed that connection after answering; the next request finds out when
        # it reads the answer, and is sent once more on a new connection.
        assert c.healthz() == {"status": "ok"}
        assert fake.requests == ["GET /healthz HTTP/1.1", "GET /healthz HTTP/1.1"]
    finally:
        fake.close()


def test_an_error_without_the_contract_body_still_raises_api_error():
    fake = FakeServer([http_answer(502, b"<html>bad gateway</html>", "text/html")])
    try:
        c = larder_client.Client(fake.url + "/prefix/", timeout=5)
        with pytest.raises(larder_client.ApiError) as e:
            c.namespace("users")
        assert (e.value.status, e.value.code) == (502, "http_502")
        assert "bad gateway" in e.value.message
        assert fake.requests == ["GET /prefix/v1/namespaces/users HTTP/1.1"]  # path prefix kept
    finally:
        fake.close()


def test_a_lookup_answered_in_json_is_a_protocol_error():
    fake = FakeServer([http_answer(200, b'{"results": [], "missing": [], "degraded": false}')])
    try:
        c = larder_client.Client(fake.url, timeout=5)
        with pytest.raises(larder_client.ProtocolError, match="application/octet-stream"):
            c.lookup("users", ["k"])
    finally:
        fake.close()
