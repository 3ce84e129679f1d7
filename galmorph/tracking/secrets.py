"""`redact(text)`: every credential in a text replaced by ***, wherever the text is logged,
tagged or printed (storage URLs, tracking URIs, failure reasons, one-line errors).

What is masked, in URLs found anywhere in the text (a sentence, an exception message):
- the password of the userinfo, `scheme://user:***@host`, also when it holds unencoded `@`,
  `:`, `/` or `?` (everything up to the last `@` before the query counts as userinfo);
- in http(s)/ws(s)/ftp(s) URLs a userinfo without a password too (`https://***@host`: such
  URLs carry tokens there);
- query and fragment values whose key names a credential (password, passwd, pwd, token,
  access_token, sig, signature, secret, api_key, ..., matched after percent-decoding), and
  the same `key=value` pairs outside URLs (libpq DSNs: `host=db password=secret`).
Each masked URL is then parsed again, by SQLAlchemy's `make_url` for database URLs and by
urllib.parse for the others; if the parser still finds a credential, everything after
`scheme://` is masked. (Neither parser alone would do: make_url ends a password at its
first `@`, urllib at its first `/`.) Passwords found, and their pieces between URL
delimiters, are also removed wherever else the same text repeats them, raw or
percent-decoded, so redact a whole message at once, the URL with the error it caused.

Not masked: a password holding whitespace (the URL ends at the first whitespace) or an
unencoded `&` in a query value (the rest reads as another parameter). Ambiguous URLs are
masked rather than shown (`https://host:8080/x?mail=a@b` becomes `https://host:***@b`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
_KEY = re.compile(r"(?<![\w%.\-])([\w%.\-]+)=")
# a value ends at whitespace or `&` only (a `;`, `#` or `,` may be part of a password); libpq
# DSNs quote values that hold spaces: password='a b'
_VALUE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]*")
_SECRET_KEYS = {"password", "passwd", "pwd", "pass", "pw", "secret", "token", "key", "apikey", "sig", "signature",
                "auth", "authorization", "credential", "credentials", "sas"}
_SECRET_ENDINGS = ("password", "passwd", "_pwd", "secret", "token", "_key", "apikey", "signature", "_sig",
                   "credential", "credentials")
_TOKEN_SCHEMES = {"http", "https", "ws", "wss", "ftp", "ftps"}
_NOT_SQLALCHEMY = _TOKEN_SCHEMES | {"file", "s3", "gs", "wasbs", "abfss", "hdfs", "dbfs", "mlflow-artifacts",
                                    "databricks", "runs", "models"}
_MIN_REPEATED = 4  # shorter passwords are masked in their URL only, not wherever the text repeats them


def redact(value) -> str:
    """`value` as text with every credential replaced by *** (see the module docstring)."""
    text = str(value)
    found: set[str] = set()
    text = _URL.sub(lambda m: _mask_url(m.group(0), found), text)
    text = _mask_pairs(text, found)
    for secret in sorted(_repeatable(found), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _repeatable(found: set[str]) -> set[str]:
    """The secrets to mask wherever else the text holds them: whole, and the pieces between URL
    delimiters, which a parser that misreads the URL quotes in its error ("invalid literal for
    int() with base 10: 'w0rd'" for a password `pa:w0rd` taken for a port)."""
    out = set()
    for secret in found:
        out.update(piece for piece in [secret, *re.split(r"[@:/?#&=;,\s]+", secret)]
                   if len(piece) >= _MIN_REPEATED and MASK not in piece)
    return out


def is_secret_key(key: str) -> bool:
    """Whether a query parameter (or DSN keyword) named `key` holds a credential."""
    name = unquote_plus(key).strip().lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_ENDINGS)


def _mask_pairs(text: str, found: set[str]) -> str:
    """Every `key=value` whose key names a credential, as `key=***`."""
    out, pos = [], 0
    for m in _KEY.finditer(text):
        if m.start() < pos or not is_secret_key(m.group(1)):
            continue
        value = _VALUE.match(text, m.end())
        if value.group(0) in ("", MASK):
            continue
        found.update({value.group(0), unquote_plus(value.group(0)), value.group(0).strip("'\"")})
        out += [text[pos : m.end()], MASK]
        pos = value.end()
    return "".join(out) + text[pos:]


def _mask_url(token: str, found: set[str]) -> str:
    scheme, _, rest = token.partition("://")
    at = _userinfo_end(rest)
    head = ""
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if colon:
            found.update({password, unquote(password)})
            head = f"{user}:{MASK}@"
        elif scheme.lower() in _TOKEN_SCHEMES:  # a token; a user name is too common a word to hunt for elsewhere
            head = f"{MASK}@"
        else:
            head = f"{user}@"
        rest = rest[at + 1 :]
    masked = f"{scheme}://{head}{_mask_pairs(rest, found)}"
    return masked if _parses_clean(scheme, masked) else f"{scheme}://{MASK}"


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of the text after `scheme://` ends (its `@`), or -1 without one.

    It ends at the last `@` before the query begins (the first `?` or `#` after the first
    `@`), so that an unencoded `@`, `:`, `/` or `?` in a password stays inside it. Text
    before the first `:` that holds a `/` is a path, not a user name (sqlite:////a@b/x.db).
    """
    first = rest.find("@")
    if first < 0:
        return -1
    stops = [i for i in (rest.find("?", first), rest.find("#", first)) if i >= 0]
    at = rest.rfind("@", 0, min(stops) if stops else len(rest))
    return -1 if "/" in rest[:at].partition(":")[0] else at


def _parses_clean(scheme: str, url: str) -> bool:
    """Whether the masked URL, parsed by the parser for its kind, shows no credential but ***."""
    try:
        if scheme.lower() not in _NOT_SQLALCHEMY and re.fullmatch(r"\w+(\+\w+)?", scheme):
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            password = parsed.password
            query = [(k, v) for k, vs in parsed.query.items() for v in (vs if isinstance(vs, tuple) else (vs,))]
        else:
            parts = urlsplit(url)
            password = parts.password
            query = parse_qsl(parts.query, keep_blank_values=True) + parse_qsl(parts.fragment, keep_blank_values=True)
    except Exception:  # not a URL either parser reads: the masking above is all there is
        return True
    return password in (None, "", MASK) and all(v in ("", MASK) for k, v in query if is_secret_key(k))
