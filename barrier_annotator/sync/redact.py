"""Secrets never reach a log line, a message or a child process.

The token or password is registered once; every log record created afterwards (by this package,
cvat-sdk, urllib3, the training engine, any handler added later) is scrubbed when it is created,
so no handler can write it. Messages printed outside logging go through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping

MASK = "***"
SECRET_ENV_VARS = ("CVAT_ACCESS_TOKEN", "CVAT_PASSWORD", "PASS")
_MIN_LENGTH = 3  # shorter strings would mask ordinary text; CVAT refuses such passwords anyway

_secrets: set[str] = set()


def register_secret(secret: str | None) -> None:
    if secret and len(secret) >= _MIN_LENGTH:
        _secrets.add(secret)


def forget_secrets() -> None:
    _secrets.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _scrub(record: logging.LogRecord) -> None:
    if not _secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: keep the raw pieces, scrubbed
        message = f"{record.msg} {record.args}"
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatted once here, so handlers print this text instead of formatting the exception again.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


@contextlib.contextmanager
def scrubbed_logging() -> Iterator[None]:
    """Install a log-record factory that scrubs secrets for the duration of the block."""
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def child_environment(extra: Mapping[str, str] | None = None, drop: Iterable[str] = SECRET_ENV_VARS) -> dict[str, str]:
    """``os.environ`` without the CVAT credentials: deploy.sh and training workers never need them."""
    env = {key: value for key, value in os.environ.items() if key not in set(drop)}
    env.update(extra or {})
    return env
