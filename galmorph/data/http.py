"""galmorph's one HTTP retry policy and User-Agent, shared by every downloader.

Callers keep their own loop and knobs (how many retries, timeouts); this module decides
what is retried and how long to wait:

- `retryable_status`: HTTP 408, 425, 429, 500, 502, 503, 504.
- `is_transient`: connection errors, timeouts and bodies cut off mid-read.
- `delay(retry, retry_after)`: before retry ``retry`` (0-based), ``BACKOFF_BASE * 2**retry``
  times a random factor in ``[1 - JITTER, 1 + JITTER]``, but never less than the server's
  Retry-After (seconds or an HTTP date), and never more than ``BACKOFF_MAX``.
- `wait(seconds, stop)`: sleeps through `_sleep`, or on a `threading.Event` so that a
  thread pool can be told to stop.

Tests patch the constants and `_sleep` here, where the policy reads them.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.client import HTTPException

import requests
import urllib3.exceptions

from galmorph import __version__

__all__ = ["RETRY_STATUS", "BACKOFF_BASE", "BACKOFF_MAX", "JITTER", "USER_AGENT", "retryable_status",
           "is_transient", "should_retry", "retry_after", "retry_after_of", "delay", "wait", "session"]

# Statuses that mean "the same request may work later". 408 (the server timed out waiting
# for us), 425 (too early) and 429 (rate limited) are the retryable 4xx. Of the 5xx, the
# transient ones: 500 (often a passing overload of a busy service), 502 and 504 (a gateway
# lost its upstream), 503 (unavailable for now). 501, 505 and the other 5xx say this server
# will never serve this request, so retrying them only delays the error.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles with each further retry
BACKOFF_MAX = 60.0  # longest single wait, Retry-After included (a server may ask for hours)
JITTER = 0.5  # +-50 %: threads and clients that failed together do not retry together
# Who is asking, for the logs of VizieR, SkyServer and Zenodo (all ask clients to say so).
USER_AGENT = f"galmorph/{__version__} python-requests/{requests.__version__}"

_sleep = time.sleep  # tests replace this to record the waits without sleeping
_DELAY_SECONDS_RE = re.compile(r"\d+(\.\d+)?")

# Errors of a request or of reading its body that a new attempt may not meet: the
# connection could not be made, was reset or timed out, or the body broke off.
# requests wraps most of them; the raw urllib3, http.client and socket ones can still
# escape while a streamed body is read. Other OSErrors (a missing CA bundle, say) are
# not transient: retrying them only delays the error.
_TRANSIENT_REQUESTS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                       requests.exceptions.ContentDecodingError)
_TRANSIENT_RAW = (urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError, urllib3.exceptions.SSLError,
                  HTTPException, ConnectionError, TimeoutError)  # the last two: the builtins (socket errors)


def retryable_status(status: int) -> bool:
    """True for an HTTP status worth the same request again later (`RETRY_STATUS`)."""
    return status in RETRY_STATUS


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, raised by sending a request or reading its body, is a connection,
    timeout or read error. A bad URL, too many redirects or an HTTP error status is not."""
    if isinstance(exc, requests.RequestException):
        return isinstance(exc, _TRANSIENT_REQUESTS)
    return isinstance(exc, _TRANSIENT_RAW)


def should_retry(exc: BaseException) -> bool:
    """True for a transient error, or an HTTPError (e.g. from ``raise_for_status``) whose
    status is retryable."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return retryable_status(exc.response.status_code)
    return is_transient(exc)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header value asks to wait (delay-seconds or an HTTP date,
    RFC 9110 section 10.2.3), at least 0; None when absent or unreadable. Not capped."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS_RE.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" zone: UTC, as HTTP dates always are
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def retry_after_of(exc: BaseException) -> str | None:
    """The Retry-After header of the response an exception carries (HTTPError), if any."""
    response = getattr(exc, "response", None)
    return response.headers.get("Retry-After") if response is not None else None


def delay(retry: int, retry_after_header: str | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0 = the first retry): the jittered
    exponential backoff or the server's Retry-After, whichever is longer, capped at
    ``BACKOFF_MAX``."""
    backoff = BACKOFF_BASE * 2.0 ** min(max(retry, 0), 64)  # 2**64 s is past any cap; avoids float overflow
    backoff *= 1.0 + JITTER * (2.0 * random.random() - 1.0)
    asked = retry_after(retry_after_header)
    return min(BACKOFF_MAX, max(backoff, asked or 0.0))


def wait(seconds: float, stop: threading.Event | None = None) -> bool:
    """Wait ``seconds``; True when ``stop`` was set meanwhile (the caller should give up)."""
    if stop is not None:
        return stop.wait(seconds)
    _sleep(seconds)
    return False


def session() -> requests.Session:
    """A new requests.Session that sends galmorph's User-Agent (not thread-safe: one per thread)."""
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s
