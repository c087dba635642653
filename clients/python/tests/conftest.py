"""Starts one real Larder server for the test session.

The binary comes from ``LARDER_BIN`` (default: this repository's ``target/debug/larder``). It runs
``larder serve --ephemeral`` on a free loopback port with gRPC off and a config file that sets
a write token and a read token, and is stopped at the end of the session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import larder_client

WRITE_TOKEN = "test-write-token"
READ_TOKEN = "test-read-token"
# clients/python/tests/conftest.py → the repository root → its debug build.
DEFAULT_BIN = str(Path(__file__).resolve().parents[3] / "target" / "debug" / "larder")
STARTUP_TIMEOUT_S = 90.0


@dataclass
class Server:
    url: str
    port: int
    log: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict:
    # None of the caller's LARDER_* variables reach the server: those under a config key
    # (LARDER_STORE, LARDER_DB, ...) would point the test server at the caller's stores, and the
    # others (LARDER_BIN) would each be logged as ignored.
    return {k: v for k, v in os.environ.items() if not k.startswith("LARDER_")}


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"larder exited with status {server.process.returncode} during startup:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"larder was not ready within {STARTUP_TIMEOUT_S:.0f} s:\n" + server.log_tail())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = os.environ.get("LARDER_BIN", DEFAULT_BIN)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"no larder binary at {binary!r}: build it (cargo build -p larder) or set LARDER_BIN")
    workdir = Path(tempfile.mkdtemp(prefix="larder-pytest-"))
    config = workdir / "larder.toml"
    config.write_text(
        'grpc_listen = ""\n'
        "[auth]\n"
        f'write_tokens = ["{WRITE_TOKEN}"]\n'
        f'read_tokens = ["{READ_TOKEN}"]\n'
    )
    started = None
    try:
        # The free port may be taken between probing and binding: then larder exits at once
        # (status 2, "cannot bind"), and another port is tried.
        for attempt in itertools.count():
            port = _free_port()
            log = workdir / f"larder-{attempt}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [
                        binary,
                        "serve",
                        "--config",
                        str(config),
                        "--ephemeral",
                        "--data-dir",
                        str(workdir / "data"),
                        "--listen",
                        f"127.0.0.1:{port}",
                    ],
                    cwd=workdir,
                    env=_server_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            candidate = Server(url=f"http://127.0.0.1:{port}", port=port, log=log, process=process)
            try:
                _wait_ready(candidate)
                started = candidate
                break
            except RuntimeError:
                _stop(process)
                if attempt < 2 and "cannot bind" in candidate.log_tail():
                    continue
                raise
        yield started
    finally:
        if started is not None:
            _stop(started.process)
        if os.environ.get("LARDER_PY_KEEP_LOGS"):
            print(f"larder logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[larder_client.Client]:
    """A client with the write token."""
    with larder_client.Client(server.url, token=WRITE_TOKEN) as c:
        yield c


@pytest.fixture(scope="session")
def reader(server: Server) -> Iterator[larder_client.Client]:
    """A client with the read-only token."""
    with larder_client.Client(server.url, token=READ_TOKEN) as c:
        yield c


@pytest.fixture(scope="session")
def anonymous(server: Server) -> Iterator[larder_client.Client]:
    """A client without a token."""
    with larder_client.Client(server.url) as c:
        yield c


_namespace_counter = itertools.count()


@pytest.fixture
def ns_name() -> str:
    """A namespace name no other test uses."""
    return f"pytest-{os.getpid()}-{next(_namespace_counter)}"


def pytest_collection_modifyitems(session, config, items):
    # Category tests wait for the pipeline, which starts generating the seeded categories as
    # soon as the server is up: run them last, so the embedding tests use that time.
    items.sort(key=lambda item: "categories" in item.nodeid)
