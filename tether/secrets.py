"""Keep secrets out of MLflow and out of logs.

Secrets reach a Tether process in two ways: environment variables (``HF_TOKEN``,
``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``, ...) and passwords inside URIs
(``postgresql://user:pass@host/db``, ``http://user:token@mlflow.internal``). Tether never copies
the environment into MLflow, but URIs do travel: the tracking URI is part of the config that is
logged as ``config/resolved.yaml``, and MLflow's own messages quote it ("View run ... at: <uri>",
"API request to <uri>/api/... failed").

* :func:`redact_uri` masks a URI's password (and credential-like query parameters);
* :func:`redact` masks those and the values of secret-looking environment variables in any text;
* :func:`redact_tree` does it for every string in a nested config dump;
* :func:`install_log_redaction` makes every log record created afterwards in this process pass
  through :func:`redact` (called when tracking is set up, never at import).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Environment variable names whose values are secrets (matched on the upper-cased name).
_SECRET_NAME = re.compile(
    r"(?:^|_)(TOKEN|SECRET|PASSWD|PASSPHRASE|APIKEY|API_KEY|ACCESS_KEY|SECRET_KEY|PRIVATE_KEY|CREDENTIALS?|AUTH|PAT|SAS)(?:$|_)"
    r"|PASSWORD"
)
# Names that match the pattern above but hold no secret (paths, switches, public ids).
_NOT_SECRET = {"MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_TOKEN_FILE", "AWS_ACCESS_KEY_ID"}
# Query parameters of presigned / SAS URLs that carry credentials.
_SECRET_QUERY = re.compile(r"(?i)(sig|signature|token|password|secret|key|credential|x-amz-security-token|x-amz-signature)")
# scheme://user:password@host  (the password is everything up to the last '@' before the host)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]*)@")
_MIN_SECRET_LEN = 4  # shorter values (a "1", "true") would mask half the text and protect nothing

_extra: set[str] = set()
_lock = threading.Lock()
_installed = False


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (``HF_TOKEN`` yes, ``HF_HOME`` no)."""
    upper = name.upper()
    return upper not in _NOT_SECRET and bool(_SECRET_NAME.search(upper))


def uri_password(value: str) -> str | None:
    """The password inside ``scheme://user:password@host`` as written (None without one)."""
    m = _USERINFO.search(value)
    return m.group("pw") if m and m.group("pw") else None


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values to mask: secret-named environment variables, passwords inside URIs in the environment,
    and values registered with :func:`add_secret`."""
    env = os.environ if environ is None else environ
    out = set()
    for name, value in env.items():
        if not value:
            continue
        if is_secret_name(name) and len(value) >= _MIN_SECRET_LEN:
            out.add(value)
        pw = uri_password(value)
        if pw and len(pw) >= _MIN_SECRET_LEN:
            out.add(pw)
    with _lock:
        out |= _extra
    return out


def add_secret(value: str | None) -> None:
    """Register a value to mask from now on (e.g. a password read from a config file)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _extra.add(value)


def redact_uri(uri: str) -> str:
    """``scheme://user:pass@host/...`` -> ``scheme://user:***@host/...``; credential query parameters masked.

    Args:
        uri: any URI (a plain path or ``sqlite:///...`` comes back unchanged).

    Returns:
        The URI without its secrets.
    """
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", uri)
    try:
        parts = urlsplit(out)
    except ValueError:
        return out
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
            out = urlunsplit(parts._replace(query=query))
    return out


def redact(text: Any, extra: Iterable[str] = ()) -> Any:
    """Mask URI passwords and known secret values in ``text``; non-strings come back unchanged.

    Args:
        text: the text to clean.
        extra: more values to mask (besides :func:`secret_values`).

    Returns:
        The text with every secret replaced by ``***``.
    """
    if not isinstance(text, str) or not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text) if "://" in text else text
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted(set(secret_values()) | {e for e in extra if e and len(e) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        if value in out:
            out = out.replace(value, MASK)
    return out


def redact_tree(obj: Any, extra: Iterable[str] = ()) -> Any:
    """:func:`redact` every string (keys too) of a nested dict / list / tuple (e.g. a config dump)."""
    extra = tuple(extra)
    if isinstance(obj, str):
        return redact(obj, extra)
    if isinstance(obj, Mapping):
        return {redact_tree(k, extra): redact_tree(v, extra) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v, extra) for v in obj)
    return obj


def install_log_redaction() -> None:
    """From now on, redact the message and string arguments of every log record in this process.

    Uses the log-record factory, so it covers every logger and handler (Tether's, MLflow's
    "View run ... at <tracking uri>", Prefect's API log handler). Idempotent.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        except Exception:  # noqa: BLE001 - logging must never fail because of redaction
            pass
        return record

    logging.setLogRecordFactory(factory)
