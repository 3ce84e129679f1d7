"""Tests for galmorph.data.download against a real HTTP server on 127.0.0.1.

The `server` fixture runs a ThreadingHTTPServer on a free port in a background thread. Each
route serves an in-memory payload; its `script` lists what the first requests get (one
action per request), and `then` what every later request gets. Actions:

    ok         200, or 206 for a Range request (Range honoured)
    norange    always 200 with the whole payload (Range ignored)
    corrupt    like ok, but every byte is flipped (right size, wrong SHA256)
    404, 403, 500, 503
    drop:K     like ok, sends the full Content-Length but closes after K body bytes
    stall:K    like ok, sends K body bytes then goes silent for STALL_S seconds

Every request is logged (path, Range header, status, body bytes sent), so tests can count
requests and check what was resumed. The backoff sleep is replaced by a recorder.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import next_timestamp

from galmorph.core.errors import GalmorphError
from galmorph.data import download, http
from galmorph.data.download import fetch, sha256_file, verify

STALL_S = 4.0  # long beside a slow client on a loaded machine: the client gives up after 0.3 s
PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(50_000))
SHA = hashlib.sha256(PAYLOAD).hexdigest()
SIZE = len(PAYLOAD)
CHUNK = 4096


# --------------------------------------------------------------------------- server


@dataclass
class Route:
    payload: bytes
    script: list[str] = field(default_factory=list)
    then: str = "ok"
    served: int = 0


@dataclass
class Logged:
    path: str
    range: str | None
    status: int = 0
    sent: int = 0  # body bytes written


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state: Server = self.server.state
        entry = Logged(self.path, self.headers.get("Range"))
        with state.lock:
            state.log.append(entry)
            route = state.routes.get(self.path)
            if route is not None:
                action = route.script[route.served] if route.served < len(route.script) else route.then
                route.served += 1
        if route is None:
            return self._error(entry, 404)
        name, _, arg = action.partition(":")
        if name in ("404", "403", "500", "503"):
            return self._error(entry, int(name))
        payload = route.payload
        if name == "corrupt":
            payload = bytes(b ^ 0xFF for b in payload)
        start = 0
        if entry.range and name != "norange":
            start = int(entry.range.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                entry.status = 416  # logged before sending: the client may act on it at once
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = payload[start:]
        entry.status = 206 if start else 200
        self.send_response(entry.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.end_headers()
        try:
            if name in ("drop", "stall"):
                k = int(arg)
                entry.sent = min(k, len(body))
                self.wfile.write(body[:k])
                self.wfile.flush()
                if name == "stall":
                    time.sleep(STALL_S)
                self.close_connection = True
                return
            for i in range(0, len(body), 8192):
                piece = body[i:i + 8192]
                entry.sent += len(piece)
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, entry: Logged, status: int):
        entry.status = status
        body = f"error {status}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client closing a keep-alive connection, or a response it abandoned, is normal here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Server:
    def __init__(self):
        self.lock = threading.Lock()
        self.routes: dict[str, Route] = {}
        self.log: list[Logged] = []
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def route(self, path: str, payload: bytes = PAYLOAD, script=(), then: str = "ok") -> str:
        self.routes[path] = Route(payload, list(script), then)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_for(self, path: str) -> list[Logged]:
        with self.lock:
            return [e for e in self.log if e.path == path]


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Record the backoff waits instead of sleeping through them."""
    recorded: list[float] = []
    monkeypatch.setattr(http, "_sleep", recorded.append)
    monkeypatch.setattr(http, "JITTER", 0.0)
    return recorded


@pytest.fixture
def dead_url(closed_port):
    """A URL on a port nothing listens on (connection refused at once): bound for the test, so
    nothing else can start listening there."""
    return f"http://127.0.0.1:{closed_port}/nothing.bin"


def part_of(dest):
    return dest.with_suffix(dest.suffix + ".part")


def get(urls, dest, **kw):
    kw.setdefault("size", SIZE)
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5.0)
    return fetch(urls, dest, SHA, **kw)


# --------------------------------------------------------------------------- sha256 / verify


def test_sha256_file_matches_hashlib_with_small_chunks(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    assert sha256_file(f, chunk_size=1000) == SHA
    assert sha256_file(f) == SHA


def test_verify(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    assert not verify(f, SHA, SIZE)  # missing
    f.write_bytes(PAYLOAD)
    assert verify(f, SHA, SIZE)
    assert verify(f, SHA.upper())  # size optional, hex case ignored
    f.write_bytes(PAYLOAD[:-1] + b"\x00")  # same size, one byte wrong
    assert not verify(f, SHA, SIZE)
    f.write_bytes(PAYLOAD[:100])

    def no_hashing(*a, **k):
        raise AssertionError("a wrong size must be caught before hashing")

    monkeypatch.setattr(download, "sha256_file", no_hashing)
    assert not verify(f, SHA, SIZE)


# --------------------------------------------------------------------------- fetch


def test_fresh_download_verifies_and_leaves_no_part(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "sub" / "dir" / "g.h5"  # parents are created
    assert get([url], dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()
    [req] = server.requests_for("/g.h5")
    assert req.range is None and req.status == 200 and req.sent == SIZE


def test_progress_bar_and_unknown_size(server, tmp_path, capsys):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    fetch(url, dest, SHA, progress=True, timeout=5.0)  # a single URL string works too
    assert dest.read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert "g.h5" in err and "B" in err


def test_existing_good_file_makes_no_request(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    dest.write_bytes(PAYLOAD)
    mtime = dest.stat().st_mtime_ns
    assert get([url], dest) == dest
    assert server.log == []
    assert dest.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("content", [PAYLOAD[:-10], PAYLOAD[:-1] + b"\x00"],
                         ids=["truncated", "same-size-wrong-bytes"])
def test_corrupt_existing_dest_is_downloaded_again(server, tmp_path, content):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    dest.write_bytes(content)
    get([url], dest)
    assert dest.read_bytes() == PAYLOAD
    [req] = server.requests_for("/g.h5")
    assert req.range is None  # the corrupt file was not resumed from


def test_dropped_connection_is_resumed_with_range(server, tmp_path, sleeps):
    url = server.route("/g.h5", script=["drop:20480"])
    dest = tmp_path / "g.h5"
    get([url], dest, retries=0, chunk_size=CHUNK)  # a try that got bytes uses no retry
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_for("/g.h5")
    assert first.status == 200 and first.sent == 20_480
    assert second.range == "bytes=20480-"
    assert second.status == 206 and second.sent == SIZE - 20_480
    assert len(sleeps) == 1


def test_connection_dropped_on_every_response_still_completes(server, tmp_path):
    url = server.route("/g.h5", then="drop:10000")  # never more than 10,000 bytes at once
    dest = tmp_path / "g.h5"
    get([url], dest, retries=0, chunk_size=1000)
    assert dest.read_bytes() == PAYLOAD
    reqs = server.requests_for("/g.h5")
    assert [r.range for r in reqs] == [None] + [f"bytes={k}-" for k in range(10_000, SIZE, 10_000)]
    assert sum(r.sent for r in reqs) == SIZE  # no byte was sent twice


def test_interrupted_download_is_resumed_by_the_next_call(server, tmp_path, sleeps):
    url = server.route("/g.h5", script=["drop:12345"], then="500")
    dest = tmp_path / "g.h5"
    with pytest.raises(GalmorphError) as info:
        get([url], dest, retries=2, chunk_size=CHUNK)
    msg = str(info.value)
    assert "HTTP 500" in msg and "kept" in msg
    assert not dest.exists()
    # kept for resuming; the chunk that was being read when the connection broke is lost
    kept = 12345 // CHUNK * CHUNK
    assert part_of(dest).read_bytes() == PAYLOAD[:kept]
    assert sleeps == [1.0, 1.0, 2.0]  # after the drop, then after 500 #1 and #2

    server.log.clear()
    server.route("/g.h5")  # the server is healthy again
    get([url], dest)
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()
    [req] = server.requests_for("/g.h5")
    assert req.range == f"bytes={kept}-"
    assert req.status == 206 and req.sent == SIZE - kept


def test_read_timeout_mid_body_is_retried_and_resumed(server, tmp_path):
    url = server.route("/g.h5", script=["stall:3000"])
    dest = tmp_path / "g.h5"
    t0 = time.monotonic()
    get([url], dest, timeout=0.3, chunk_size=1000)
    assert time.monotonic() - t0 < STALL_S  # gave up on the stalled response early
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_for("/g.h5")
    assert second.range == "bytes=3000-" and second.sent == SIZE - 3000


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.route("/g.h5", then="norange")
    dest = tmp_path / "g.h5"
    part_of(dest).write_bytes(PAYLOAD[:7000])
    get([url], dest)
    assert dest.read_bytes() == PAYLOAD
    assert not part_of(dest).exists()
    [req] = server.requests_for("/g.h5")
    assert req.range == "bytes=7000-" and req.status == 200 and req.sent == SIZE


def test_stale_part_with_wrong_bytes_is_restarted_once(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    part_of(dest).write_bytes(b"\x00" * 5000)  # not a prefix of the file
    get([url], dest)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_for("/g.h5")
    assert first.range == "bytes=5000-" and first.status == 206
    assert second.range is None and second.status == 200


def test_416_for_a_complete_part_installs_it(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    part_of(dest).write_bytes(PAYLOAD)
    get([url], dest, size=None)  # without a size the .part cannot be judged offline
    assert dest.read_bytes() == PAYLOAD
    [req] = server.requests_for("/g.h5")
    assert req.range == f"bytes={SIZE}-" and req.status == 416


def test_416_for_a_bad_part_restarts(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    part_of(dest).write_bytes(b"\x01" * (SIZE + 10))
    get([url], dest, size=None)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_for("/g.h5")
    assert first.status == 416 and second.range is None and second.status == 200


def test_complete_part_is_installed_offline_and_oversized_part_discarded(server, tmp_path):
    url = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    part_of(dest).write_bytes(PAYLOAD)
    get([url], dest)
    assert dest.read_bytes() == PAYLOAD and server.log == []

    dest2 = tmp_path / "h.h5"
    part_of(dest2).write_bytes(PAYLOAD + b"extra")
    get([url], dest2)
    assert dest2.read_bytes() == PAYLOAD
    [req] = server.requests_for("/g.h5")
    assert req.range is None


@pytest.mark.parametrize("status", ["404", "403"])
def test_fallback_to_second_url(server, tmp_path, sleeps, status):
    bad = server.route("/missing.h5", then=status)
    good = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    get([bad, good], dest)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests_for("/missing.h5")) == 1  # no retries on 4xx
    assert len(server.requests_for("/g.h5")) == 1
    assert sleeps == []


def test_retries_500_with_exponential_backoff(server, tmp_path, sleeps):
    url = server.route("/g.h5", script=["500", "503", "500"])
    dest = tmp_path / "g.h5"
    get([url], dest, retries=3)
    assert dest.read_bytes() == PAYLOAD
    assert [r.status for r in server.requests_for("/g.h5")] == [500, 503, 500, 200]
    assert sleeps == [1.0, 2.0, 4.0]


def test_retries_are_bounded(server, tmp_path, sleeps, monkeypatch):
    monkeypatch.setattr(http, "BACKOFF_MAX", 1.5)
    url = server.route("/g.h5", then="500")
    dest = tmp_path / "g.h5"
    with pytest.raises(GalmorphError, match="HTTP 500"):
        get([url], dest, retries=2)
    assert len(server.requests_for("/g.h5")) == 3  # 1 + retries
    assert sleeps == [1.0, 1.5]  # capped by BACKOFF_MAX
    assert not dest.exists() and not part_of(dest).exists()


def test_all_urls_fail_one_line_error(server, tmp_path, dead_url):
    missing = server.route("/missing.h5", then="404")
    dest = tmp_path / "data" / "g.h5"
    with pytest.raises(GalmorphError) as info:
        get([missing, dead_url], dest, retries=1)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert missing in msg and dead_url in msg
    assert "HTTP 404" in msg and "connection failed" in msg
    assert "by hand" in msg and str(dest) in msg and SHA in msg
    assert not dest.exists() and not part_of(dest).exists()


def test_checksum_mismatch_on_every_url(server, tmp_path):
    a = server.route("/a.h5", then="corrupt")
    b = server.route("/b.h5", then="corrupt")
    dest = tmp_path / "g.h5"
    with pytest.raises(GalmorphError) as info:
        get([a, b], dest)
    msg = str(info.value)
    assert "\n" not in msg and "SHA256 mismatch" in msg and a in msg and b in msg
    assert not dest.exists() and not part_of(dest).exists()
    assert len(server.requests_for("/a.h5")) == 1  # a mismatch is not retried on one URL


def test_checksum_mismatch_falls_back_to_next_url(server, tmp_path):
    bad = server.route("/bad.h5", then="corrupt")
    good = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    get([bad, good], dest)
    assert dest.read_bytes() == PAYLOAD
    [req] = server.requests_for("/g.h5")
    assert req.range is None  # the failed bytes were deleted, not resumed from


def test_wrong_size_is_rejected_from_headers(server, tmp_path):
    other = server.route("/other.h5", payload=b"<html>not the file</html>")
    good = server.route("/g.h5")
    dest = tmp_path / "g.h5"
    get([other, good], dest)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(GalmorphError, match="offers 25 bytes, expected 50,000"):
        get([other], tmp_path / "x.h5")


def test_no_urls_and_bad_arguments(tmp_path):
    with pytest.raises(GalmorphError, match="by hand"):
        get([], tmp_path / "g.h5")
    with pytest.raises(ValueError):
        fetch(["http://127.0.0.1:1/x"], tmp_path / "g.h5", "not-a-hash")
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- Galaxy10 in the registry


@pytest.fixture
def galaxy10(server, tmp_path, monkeypatch):
    """The Galaxy10 record pointed at the local server's PAYLOAD; no astroNN copy; hashes counted."""
    import dataclasses

    from galmorph.data import integrity, registry

    url = server.route("/Galaxy10.h5")
    record = dataclasses.replace(registry.DATASETS["galaxy10"], urls=(url,), sha256=SHA, size_bytes=SIZE)
    monkeypatch.setitem(registry.DATASETS, "galaxy10", record)
    monkeypatch.setattr(registry, "ASTRONN_GALAXY10", tmp_path / "astronn" / "Galaxy10.h5")
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "cache"))
    hashed = []
    for module in (integrity, download):
        real = module.sha256_file
        monkeypatch.setattr(module, "sha256_file", lambda p, *a, real=real, **k: hashed.append(p) or real(p, *a, **k))
    return {"registry": registry, "requests": lambda: server.requests_for("/Galaxy10.h5"), "hashed": hashed,
            "dest": tmp_path / "cache" / "Galaxy10.h5"}


def test_galaxy10_is_verified_once_per_file_version(galaxy10):
    registry, dest = galaxy10["registry"], galaxy10["dest"]
    assert registry.galaxy10_path(progress=False) == dest and dest.read_bytes() == PAYLOAD
    assert len(galaxy10["requests"]()) == 1 and len(galaxy10["hashed"]) == 1  # the download, verified once
    for download_allowed in (True, False, True):
        assert registry.galaxy10_path(download=download_allowed, progress=False) == dest
    assert len(galaxy10["requests"]()) == 1 and len(galaxy10["hashed"]) == 1  # no request, no re-hash


def test_damaged_galaxy10_is_never_used(galaxy10):
    registry, dest = galaxy10["registry"], galaxy10["dest"]
    registry.galaxy10_path(progress=False)
    next_timestamp(dest)
    with open(dest, "r+b") as fh:  # one byte in the middle, in place (same size)
        fh.seek(SIZE // 2)
        byte = fh.read(1)[0]
        fh.seek(SIZE // 2)
        fh.write(bytes([byte ^ 0xFF]))
    with pytest.raises(GalmorphError, match=r"the downloaded .*Galaxy10.h5 is damaged \(SHA256 .* is not used; "
                                            r"download it again: run `galmorph data download galaxy10`"):
        registry.galaxy10_path(download=False, progress=False)
    assert registry.galaxy10_path(progress=False) == dest  # downloaded again
    assert dest.read_bytes() == PAYLOAD and len(galaxy10["requests"]()) == 2


def test_astronn_copy_is_verified_without_writing_into_its_folder(galaxy10, tmp_path):
    registry = galaxy10["registry"]
    theirs = registry.ASTRONN_GALAXY10
    theirs.parent.mkdir()
    theirs.write_bytes(PAYLOAD)
    for _ in range(3):
        assert registry.galaxy10_path(progress=False) == theirs
    assert galaxy10["hashed"] == [theirs] and not galaxy10["requests"]()
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["Galaxy10.h5"]
    theirs.write_bytes(PAYLOAD[:-1])  # truncated: galmorph's own copy is fetched instead
    assert registry.galaxy10_path(progress=False) == galaxy10["dest"]
