"""Download a file from a list of mirrors, resumably, and verify it by SHA256.

`fetch(urls, dest, sha256, size)` is the one entry point the rest of galmorph uses (for
example for Galaxy10.h5, 210,234,548 bytes, from Zenodo). What it guarantees:

- `dest` only ever holds a verified file. A `dest` that exists but has the wrong size or
  hash is deleted and downloaded again, never used. The download goes to `<dest>.part` and
  is moved into place with `os.replace` only after its size and SHA256 check out.
- An interrupted download resumes: an existing `.part` is continued with
  `Range: bytes=N-`. A server that answers 200 (ignores Range) restarts it from byte 0; 206
  appends; 416 means the part is already whole (verified and installed) or bad (restarted).
  A `.part` longer than `size` is discarded.
- Per URL, what is retried and how long to wait follow galmorph's one HTTP policy
  (`galmorph.data.http`: connection errors, timeouts, broken bodies and HTTP 408, 425, 429,
  500, 502, 503, 504; jittered exponential backoff, Retry-After honoured, capped). An
  attempt that received new bytes before failing does not use up a retry, because the next
  one resumes after them. Other HTTP errors (404, 403, 501, ...), other request errors (a
  bad URL, too many redirects) and a wrong size or SHA256 move on to the next URL.
- A `.part` that failed verification is deleted; one left by a broken connection is kept so
  that the next call resumes it.
- When every URL fails, `GalmorphError` says, in one line, which URLs were tried, what went
  wrong with each, and how to fix it (download the file by hand to `dest`).

Imports are light: requests and tqdm only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import requests
from tqdm import tqdm

from galmorph.core.errors import GalmorphError
from galmorph.core.io import check_writable
from galmorph.data import http
from galmorph.data.integrity import sha256_file

__all__ = ["fetch", "sha256_file", "verify"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


# --------------------------------------------------------------------------- checks


def _problem(path: Path, sha256: str, size: int | None) -> str | None:
    """Return why `path` is not the expected file (size first, it is cheap), or None."""
    try:
        actual_size = Path(path).stat().st_size
    except FileNotFoundError:
        return "file missing"
    if size is not None and actual_size != size:
        return f"size {actual_size:,} bytes, expected {size:,}"
    actual = sha256_file(path)
    if actual != sha256.lower():
        return f"SHA256 mismatch: got {actual}, expected {sha256.lower()}"
    return None


def verify(path: Path, sha256: str, size: int | None = None) -> bool:
    """True if `path` is a file of `size` bytes (when given) whose SHA256 is `sha256`.

    The size is checked first, so a truncated file is rejected without reading it.
    """
    path = Path(path)
    if not path.is_file():
        return False
    return _problem(path, sha256, size) is None


# --------------------------------------------------------------------------- one try


class _Retry(Exception):
    """A transient failure: try the same URL again after a backoff."""

    def __init__(self, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # the server's Retry-After header, if any


class _Skip(Exception):
    """This URL will not give the file: move on to the next one."""


class _Restart(Exception):
    """The .part cannot be continued: delete it and start again from byte 0."""


class _RangeNotSatisfiable(Exception):
    """HTTP 416 to a Range request: the .part is either complete or bad."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    """A short one-line description of a requests/urllib3 exception.

    requests wraps urllib3 wraps socket errors, and the full text repeats the host and
    pool; keep the part a person can act on, such as "[Errno 111] Connection refused".
    """
    detail = _one_line(exc)
    if isinstance(exc, requests.Timeout) or "timed out" in detail.lower():
        return "timed out"
    errno = re.search(r"\[Errno -?\d+\][^'\"()]*", detail)
    if errno:
        detail = errno.group(0).strip()
    elif len(detail) > 160:
        detail = detail[:157] + "..."
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed: {detail}" if detail else "connection failed"
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    timeout: float,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> bool:
    """GET `url` into `part`, continuing it if it exists.

    Returns when the response body has been written completely, and says whether the
    result was appended to bytes from an earlier try (so a hash mismatch may be the old
    bytes' fault). Raises _Retry, _Skip, _Restart or _RangeNotSatisfiable otherwise, and
    OSError when the .part cannot be written.
    """
    offset = _size_of(part)
    # identity: byte counts and Range offsets must refer to the file itself, not a gzip of it
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidURL) as exc:
        raise _Skip(f"bad URL: {_describe(exc)}") from exc
    except requests.RequestException as exc:
        raise _as_failure(exc) from exc

    with response:
        status = response.status_code
        reason = _one_line(response.reason or "")
        if status == 416 and offset:
            raise _RangeNotSatisfiable()
        if http.retryable_status(status):
            raise _Retry(f"HTTP {status} {reason}".strip(), response.headers.get("Retry-After"))
        if status not in (200, 206):
            raise _Skip(f"HTTP {status} {reason}".strip())

        length = _int_header(response.headers.get("Content-Length"))
        if status == 206:
            match = _CONTENT_RANGE_RE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if match is None:
                raise _Restart("HTTP 206 without a usable Content-Range")
            start = int(match.group(1))
            if start != offset:
                raise _Restart(f"server resumed at byte {start:,} instead of {offset:,}")
            total = int(match.group(3)) if match.group(3) != "*" else None
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        else:  # 200: the whole file, whether or not we asked for a range
            offset = 0
            total = length
            mode = "wb"
        if size is not None and total is not None and total != size:
            raise _Skip(f"server offers {total:,} bytes, expected {size:,}")

        received = _write_body(response, part, mode, offset, total, size, chunk_size, progress, desc)

    have = offset + received
    if length is not None and received < length:
        raise _Retry(f"connection closed after {have:,} of {offset + length:,} bytes")
    if size is not None and have < size:
        raise _Retry(f"connection closed after {have:,} of {size:,} bytes")
    return mode == "ab"


def _write_body(response: requests.Response, part: Path, mode: str, offset: int, total: int | None,
                size: int | None, chunk_size: int, progress: bool, desc: str) -> int:
    """Write the body of `response` to `part` (opened with `mode`, "ab" after `offset` bytes
    or "wb"), synced; return the bytes received. A connection that breaks mid-body is a
    _Retry (what arrived is kept, so the next try resumes after it); more bytes than
    `size` is a _Skip.
    """
    received = 0
    chunks = response.iter_content(chunk_size)
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
              desc=desc, disable=not progress) as bar, open(part, mode) as f:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except Exception as exc:
                f.flush()
                if http.is_transient(exc) or isinstance(exc, requests.RequestException):
                    raise _as_failure(exc) from exc
                raise
            if not chunk:
                continue
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if size is not None and offset + received > size:
                raise _Skip(f"server sent more than the expected {size:,} bytes")
        f.flush()
        os.fsync(f.fileno())
    return received


def _as_failure(exc: Exception) -> Exception:
    """_Retry for an error the HTTP policy calls transient, _Skip for any other."""
    return (_Retry if http.is_transient(exc) else _Skip)(_describe(exc))


# --------------------------------------------------------------------------- one URL


def _fetch_url(
    session: requests.Session,
    url: str,
    part: Path,
    sha256: str,
    size: int | None,
    timeout: float,
    retries: int,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> str | None:
    """Try `url` until `part` holds the verified file (return None) or give up (return why)."""
    failures = 0  # tries that failed without receiving a byte
    restarts = 0  # times the .part was thrown away and begun again on this URL
    while True:
        before = _size_of(part)
        try:
            resumed = _attempt(session, url, part, size, timeout, chunk_size, progress, desc)
        except _Skip as exc:
            if size is not None and _size_of(part) > size:
                part.unlink(missing_ok=True)  # more bytes than the file has: not a prefix of it
            return str(exc)
        except _Retry as exc:
            made_progress = _size_of(part) > before
            if not made_progress:
                failures += 1
                if failures > retries:
                    tries = "try" if failures == 1 else "tries"
                    return f"{exc} (after {failures} {tries})"
            # A try that made progress waits like the first retry: the backoff grows only
            # with tries that got nothing.
            http.wait(http.delay(max(failures - 1, 0), exc.retry_after))
            continue
        except (_Restart, _RangeNotSatisfiable) as exc:
            if isinstance(exc, _RangeNotSatisfiable):
                problem = _problem(part, sha256, size)
                if problem is None:
                    return None  # the .part was already the whole file
                reason = f"HTTP 416 for a {before:,}-byte partial file that is bad ({problem})"
            else:
                reason = str(exc)
            part.unlink(missing_ok=True)
            restarts += 1
            if restarts > 1:
                return reason
            continue

        problem = _problem(part, sha256, size)
        if problem is None:
            return None
        part.unlink(missing_ok=True)  # never keep bytes that failed verification
        if resumed and restarts == 0:
            # The mismatch may come from a stale .part we appended to: once, start afresh.
            restarts += 1
            continue
        return problem


# --------------------------------------------------------------------------- entry point


def fetch(
    urls: Sequence[str],
    dest: Path,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download the first URL that works into `dest`, verified against `sha256`.

    `urls` are mirrors of one file, tried in order. `size` (bytes), when given, is checked
    before the hash and lets a wrong file be rejected from its headers. `timeout` is the
    connect and read timeout in seconds; `retries` is how many times one URL is tried again
    after a transient failure (so 1 + retries tries). Returns `dest`; raises GalmorphError
    (one line) when no URL gives the right file. `dest` is never left half-written.
    """
    dest = Path(dest)
    if isinstance(urls, (str, bytes)):
        urls = [urls]
    urls = [str(u) for u in urls]
    sha256 = str(sha256).strip().lower()
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")

    fix = f"download it by hand to {dest} (SHA256 {sha256})"
    try:
        if dest.exists():
            if verify(dest, sha256, size):
                return dest
            dest.unlink()  # corrupt or truncated: never used
        if not urls:
            raise GalmorphError(f"{dest.name} is missing and no URL was given; {fix}")
        # before the first request: a read-only cache is one line now, not after a download
        check_writable(dest, "dataset file", f"set GALMORPH_CACHE to a writable folder, or {fix}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(dest.suffix + ".part")

        # A leftover .part that is longer than the file is useless; one of the full size may
        # be the finished download whose move into place was interrupted.
        if size is not None and part.exists():
            have = _size_of(part)
            if have > size or (have == size and not verify(part, sha256, size)):
                part.unlink()
            elif have == size:
                os.replace(part, dest)
                return dest

        tried = []
        with http.session() as session:
            for url in urls:
                error = _fetch_url(session, url, part, sha256, size, timeout, retries,
                                   chunk_size, progress, dest.name)
                if error is None:
                    os.replace(part, dest)
                    return dest
                tried.append(f"{url} ({_one_line(error)})")
    except OSError as exc:  # disk full, no permission, ...: the user can fix these
        if isinstance(exc, requests.RequestException):  # these subclass OSError too
            raise
        raise GalmorphError(
            f"cannot write {dest.name}: {_one_line(exc)}; free some space or fix the "
            f"permissions of {dest.parent}, or {fix}") from exc

    kept = ""
    if part.exists():
        kept = f"; the partial download {part.name} is kept and the next try resumes it"
    raise GalmorphError(
        f"could not download {dest.name}: tried {'; '.join(tried)}; "
        f"check your connection or {fix}{kept}")
