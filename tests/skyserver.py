"""A local VizieR + SDSS SkyServer stand-in on 127.0.0.1 (port 0), for the tests of the
nair2010 preparation and of everything that fetches cutouts.

It speaks VizieR's ASU tab-separated protocol (and a VOTable endpoint for the astroquery
path) from tests/data/nair2010/asu_table2.tsv, and serves ImgCutout-like JPEGs made with PIL
whose colour differs by band (R = i = 200, G = r = 120, B = g = 20 + 10 k for galaxy k), so
tests can check that the g band lands in channel 2 and that every image sits next to its own
labels. Per-galaxy modes (`server.state.modes[k]`) script the failures.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from galmorph.data import nair2010

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "nair2010" / "asu_table2.tsv"

# The fixture's rows (also parsed here independently of the module under test).
_LINES = FIXTURE.read_text().splitlines()
_DASH = next(i for i, ln in enumerate(_LINES) if ln.startswith("-----"))
_ROWS = [ln.split("\t") for ln in _LINES[_DASH + 1:] if ln.strip()]
N = len(_ROWS)
RA = [float(r[0]) for r in _ROWS]
DEC = [float(r[1]) for r in _ROWS]
IDS = [r[2].strip() for r in _ROWS]
Z = [float(r[3]) if r[3].strip() else math.nan for r in _ROWS]
TT = [int(r[5]) for r in _ROWS]
# Nair T-types of the fixture and the 4-way class each must get (REFERENCE.md section 1).
EXPECTED_CLASS = {-5: 0, -3: 1, -2: 1, 0: 1, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 8: 2, 9: 2, 10: 3, 99: 3}

R_I, G_R = 200, 120


def g_value(k: int) -> int:
    return 20 + 10 * k


def _jpeg(k: int, size: int = 110, blank: bool = False) -> bytes:
    """Sky of (i, r, g) = (200, 120, g_value(k)) with a brighter 30x30 'galaxy' in the middle."""
    arr = np.empty((size, size, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = R_I, G_R, g_value(k)
    c = size // 2
    h = min(15, size // 4)
    arr[c - h:c + h, c - h:c + h] += 40
    if blank:
        arr[:] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.catalogue_mode = "ok"  # ok | empty | html
        self.catalogue_queries: list[dict] = []
        self.catalogue_raw: list[str] = []
        self.votable_bodies: list[str] = []
        self.modes: dict[int, str] = {}  # galaxy -> ok | fail_once | 429_once | slow_once | always500 | truncated | wrong_size | html | blank | 404
        self.expect = ("0.7", "110", "110")  # the scale, width and height every cutout request must ask for
        self.down: set[int] = set()  # galaxies answered 500 while listed
        self.delay = 0.0  # seconds every cutout request takes
        self.slow_s = 3.0
        self.requests: Counter = Counter()
        self.times: list[float] = []
        self.inflight = 0
        self.max_inflight = 0

    def galaxy(self, ra: float) -> int:
        return int(np.argmin(np.abs(np.asarray(RA) - ra)))

    def catalogue_text(self, out_max: str) -> str:
        head, rows = _LINES[: _DASH + 1], _LINES[_DASH + 1:]
        rows = [r for r in rows if r.strip()]
        if out_max != "unlimited":
            rows = rows[: int(out_max)]
        return "\n".join(head + rows) + "\n\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def do_POST(self):
        state: _State = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if urlparse(self.path).path != "/viz-bin/votable":
            return self._send(404, b"not found", "text/plain")
        with state.lock:
            state.votable_bodies.append(body)
        self._send(200, _votable_bytes(), "text/xml")

    def do_GET(self):
        state: _State = self.server.state
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/viz-bin/asu-tsv":
            with state.lock:
                state.catalogue_queries.append(q)
                state.catalogue_raw.append(url.query)
            if state.catalogue_mode == "empty":
                text = "\n".join(_LINES[:_DASH - 3]) + "\n#***** No table rows\n"
                return self._send(200, text.encode(), "text/tab-separated-values")
            if state.catalogue_mode == "html":
                return self._send(200, b"<html><body>Service maintenance</body></html>", "text/html")
            text = state.catalogue_text(q.get("-out.max", "50"))
            return self._send(200, text.encode(), "text/tab-separated-values")
        if url.path != "/cutout":
            return self._send(404, b"not found", "text/plain")
        k = state.galaxy(float(q["ra"]))
        with state.lock:
            state.requests[k] += 1
            nth = state.requests[k]
            state.times.append(time.monotonic())
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            assert (q["scale"], q["width"], q["height"]) == state.expect, q
            size = int(q["width"])
            if state.delay:
                time.sleep(state.delay)
            mode = "down" if k in state.down else state.modes.get(k, "ok")
            if mode in ("down", "always500") or (mode == "fail_once" and nth == 1):
                return self._send(500, b"Internal Server Error", "text/plain")
            if mode == "429_once" and nth == 1:
                return self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": "0"})
            if mode == "slow_once" and nth == 1:
                time.sleep(state.slow_s)
            if mode == "404":
                return self._send(404, b"<html><body>Not Found</body></html>", "text/html")
            if mode == "truncated":
                data = _jpeg(k, size)
                return self._send(200, data[: len(data) // 2], "image/jpeg")
            if mode == "wrong_size":
                return self._send(200, _jpeg(k, size=size - 10), "image/jpeg")
            if mode == "blank":
                return self._send(200, _jpeg(k, size, blank=True), "image/jpeg")
            if mode == "html":
                return self._send(200, b"<html>Error: no image here</html>", "text/html")
            return self._send(200, _jpeg(k, size), "image/jpeg")
        finally:
            with state.lock:
                state.inflight -= 1


def _votable_bytes() -> bytes:
    from astropy.io.votable import from_table
    from astropy.table import MaskedColumn, Table

    t = Table()
    t["_RAJ2000"], t["_DEJ2000"], t["SDSS"] = RA, DEC, IDS
    t["z"] = MaskedColumn([0.0 if math.isnan(z) else z for z in Z], mask=[math.isnan(z) for z in Z])
    t["TT"] = np.array(TT, dtype=np.int16)
    vot = from_table(t)
    vot.get_first_table().name = nair2010.CATALOGUE
    buf = io.BytesIO()
    vot.to_xml(buf)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # teardown must not wait for the deliberately slow handler

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = _State()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
