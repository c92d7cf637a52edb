"""Fixtures: a real spendb (the release binary, on ports the OS picks, in a
temporary data dir), clients for it, and a TCP proxy that can lose a reply.

The binary is `$SPENDB_BIN`, else `target/release/spendb` of this checkout;
`scripts/test` builds it. A missing binary fails the tests (never skips)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import spendb
from spendb.aio import AsyncClient

REPO = Path(__file__).resolve().parents[3]


def spendb_bin() -> str:
    path = os.environ.get("SPENDB_BIN") or str(REPO / "target/release/spendb")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"spendb binary not found at {path}: run `cargo build --release` in {REPO} "
            "(scripts/test does), or set SPENDB_BIN"
        )
    return path


@dataclass
class Server:
    """One spendb process. `url` for the Redis port, `admin` for the HTTP API."""

    proc: subprocess.Popen[bytes]
    data_dir: str
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_server(*extra: str) -> Server:
    data_dir = tempfile.mkdtemp(prefix="spendb-py-")
    log = Path(data_dir) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                spendb_bin(),
                "serve",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--data-dir",
                str(Path(data_dir) / "data"),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        ready = re.search(r"spendb ready.*resp=127\.0\.0\.1:(\d+).*admin=127\.0\.0\.1:(\d+)", text)
        if ready:
            return Server(proc, data_dir, int(ready[1]), int(ready[2]), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"spendb did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = start_server()
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[spendb.Client]:
    c = spendb.connect(server.url)
    yield c
    c.close()


@pytest.fixture
async def aclient(server: Server) -> AsyncIterator[AsyncClient]:
    c = spendb.aio.connect(server.url)
    yield c
    await c.aclose()


@pytest.fixture
def scope() -> str:
    """A scope no other test uses."""
    return f"org:t{uuid.uuid4().hex[:12]}"


@dataclass
class LossyProxy:
    """A TCP proxy to spendb that, while `drop_replies_to` names a command,
    forwards that command to the server, reads the server's reply, and closes
    the client's connection instead of passing the reply on: the request was
    applied, the client never heard. `dropped` counts the replies lost."""

    target: int
    drop_replies_to: bytes | None = None
    dropped: int = 0
    listener: socket.socket = field(default_factory=socket.socket)
    conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> int:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()
        return int(self.listener.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        # One request at a time (the client's commands here are not pipelined):
        # read what the client sent, forward it, read the reply, decide.
        try:
            while True:
                request = client.recv(65536)
                if not request:
                    break
                upstream.sendall(request)
                upstream.settimeout(5)
                reply = upstream.recv(65536)
                upstream.settimeout(0.05)
                try:  # the rest of a long reply
                    while chunk := upstream.recv(65536):
                        reply += chunk
                except (TimeoutError, BlockingIOError):
                    pass
                if self.drop_replies_to and self.drop_replies_to in request.upper():
                    self.drop_replies_to = None
                    self.dropped += 1
                    break
                client.sendall(reply)
        except OSError:
            pass
        for s in (client, upstream):
            s.close()

    def stop(self) -> None:
        self.listener.close()
        for s in self.conns:
            s.close()


@pytest.fixture
def lossy_proxy(server: Server) -> Iterator[LossyProxy]:
    proxy = LossyProxy(server.port)
    proxy.start()
    yield proxy
    proxy.stop()
