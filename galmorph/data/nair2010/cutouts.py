"""SDSS SkyServer ImgCutout cutouts: fetching one, checking and decoding it, and fetching many
with a bounded thread pool under one token-bucket rate limit.

Every request goes through the rate limit; failed ones are retried under galmorph's HTTP
policy (`galmorph.data.http`), waiting on the pool's stop event so that Ctrl-C ends the
run at once. A good cutout is stored in the cache the moment it arrives (temp name, then
``os.replace``); a bad one (not a size x size RGB JPEG, or blank) is never stored.

The nair2010 preparation fetches 110 px at 0.7 arcsec/px; `galmorph predict` fetches a
catalogue's cutouts with the same functions at its model's side and pixel scale.
"""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import requests

from galmorph.core.io import atomic_write
from galmorph.data import http
from galmorph.data.nair2010.params import SCALE_ARCSEC, SIZE, STALE_TMP_S
from galmorph.data.nair2010.support import one_line


class _TokenBucket:
    """A thread-safe token bucket: `rate` tokens/s, at most `capacity` saved up."""

    def __init__(self, rate: float, capacity: float = 1.0):
        self.rate, self.capacity = float(rate), float(capacity)
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> bool:
        """Take a token, waiting for it; False when `stop` was set meanwhile."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0  # reserve now, wait outside the lock: callers queue fairly
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        return not stop.wait(wait) if wait > 0 else not stop.is_set()


class _Sessions:
    """One requests.Session per worker thread (a Session is not thread-safe)."""

    def __init__(self):
        self.local, self.all, self.lock = threading.local(), [], threading.Lock()

    def get(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = http.session()
            self.local.session = s
            with self.lock:
                self.all.append(s)
        return s

    def close(self):
        for s in self.all:
            s.close()


def _check_cutout(data: bytes, size: int = SIZE) -> str | None:
    """None when `data` is a size x size RGB JPEG that decodes completely, else the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, got, mode = im.format, im.size, im.mode
            im.load()
            extrema = im.getextrema()
    except Exception as exc:  # PIL raises many types for broken files
        head = data[:40].decode("latin-1", errors="replace")
        return one_line(f"not a decodable image ({type(exc).__name__}: {exc}; starts {head!r})")[:300]
    if fmt != "JPEG":
        return f"not a JPEG ({fmt})"
    if got != (size, size):
        return f"wrong size {got[0]}x{got[1]} (expected {size}x{size})"
    if mode != "RGB":
        return f"not an RGB colour image (mode {mode})"
    # Outside the footprint SkyServer answers a uniform image; galmorph's HDF5 reader
    # rejects blank images, and they carry no information anyway.
    if all(lo == hi for lo, hi in extrema):
        return "blank image (every band uniform; no SDSS imaging here?)"
    return None


def decode(path: Path, size: int = SIZE) -> np.ndarray:
    """The stored cutout at `path` as uint8 (size, size, 3); ValueError (or PIL's error) when
    it is not a size x size RGB JPEG."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "JPEG" or im.size != (size, size) or im.mode != "RGB":
            raise ValueError(f"{im.format} {im.size} {im.mode}")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _fetch_cutout(session: requests.Session, url: str, ra: float, dec: float, *, timeout: float,
                  retries: int, bucket: _TokenBucket, stop: threading.Event, scale: float = SCALE_ARCSEC,
                  size: int = SIZE) -> tuple[bytes | None, str | None]:
    """(JPEG bytes, None) or (None, reason): a size x size cutout at `scale` arcsec/px. Retries
    what the HTTP policy retries, up to `retries` times; any other request error propagates."""
    params = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "scale": f"{scale:g}",
              "width": str(size), "height": str(size)}
    reason = "not attempted"
    for attempt in range(retries + 1):
        if not bucket.acquire(stop):
            return None, "interrupted"
        retry_after = None
        try:
            resp = session.get(url, params=params, timeout=timeout)
            status, content = resp.status_code, resp.content
        except Exception as exc:
            if not http.is_transient(exc):
                raise
            reason = type(exc).__name__
        else:
            if status == 200:
                return (content, None) if (bad := _check_cutout(content, size)) is None else (None, bad)
            reason = f"HTTP {status}"
            if not http.retryable_status(status):
                return None, reason
            retry_after = resp.headers.get("Retry-After")
        if attempt < retries and http.wait(http.delay(attempt, retry_after), stop):
            return None, "interrupted"
    return None, f"{reason} after {retries + 1} attempt{'s' if retries else ''}"


def cutout_name(objid: str) -> str:
    """The cache file name of a galaxy's cutout (the objid, made safe for any file system)."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", objid) + ".jpg"


def remove_stale_tmp(folder: Path) -> None:
    """Delete temp files left by a killed run (old enough not to belong to a live one)."""
    now = time.time()
    for p in folder.glob("*.tmp"):
        try:
            if now - p.stat().st_mtime > STALE_TMP_S:
                p.unlink()
        except OSError:
            pass


def _store_cutout(path: Path, data: bytes):
    atomic_write(path, lambda fh: fh.write(data), text=False, sync=False)


def download_cutouts(todo, files, ra, dec, failures, *, url, workers, max_rate, retries, timeout, progress,
                     scale=SCALE_ARCSEC, size: int = SIZE, desc: str = "nair2010 cutouts") -> None:
    """Fetch and store the cutouts of rows `todo` (into ``files[k]``), size x size px at `scale`
    arcsec/px (one number, or one per row); failures go into `failures` (row -> reason). On
    Ctrl-C or an error the workers stop at their next wait, the queue is dropped and what was
    stored stays stored."""
    from tqdm.auto import tqdm

    if not todo:
        return
    bucket, stop, sessions = _TokenBucket(max_rate), threading.Event(), _Sessions()
    scales = scale if np.ndim(scale) else [scale] * len(files)

    def job(k: int) -> tuple[int, str | None]:
        if stop.is_set():
            return k, "interrupted"
        data, reason = _fetch_cutout(sessions.get(), url, ra[k], dec[k], timeout=timeout, retries=retries,
                                     bucket=bucket, stop=stop, scale=scales[k], size=size)
        if data is not None:
            _store_cutout(files[k], data)
        return k, reason

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nair2010")
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    try:
        futures = [pool.submit(job, k) for k in todo]
        for fut in as_completed(futures):
            k, reason = fut.result()
            if reason is not None:
                failures[k] = reason
            bar.update(1)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)
    except BaseException:
        # Ctrl-C or a bug: stop the workers at their next wait, drop the queue, keep what is stored.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        bar.close()
        sessions.close()
