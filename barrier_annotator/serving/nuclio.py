"""Nuclio glue: keep the handler on the worker's context and turn its replies into Responses.

Kept apart from :mod:`.handler` so the handler has no Nuclio types in it; ``nuclio_sdk`` itself
is not imported either (the worker hands over ``context.Response``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .handler import KINDS, ModelHandler

PACKAGE_LOGGERS = ("mask2former", "barrier_annotator")
"""The product's loggers: the model's (loading, backends) and the handler's (refusals)."""


class ContextLogHandler(logging.Handler):
    """Forwards the package's log records to the Nuclio worker's ``context.logger``.

    Nuclio's logger has ``debug/info/warn/error`` and no ``exception``: tracebacks are
    appended to the message so they reach the function's logs.
    """

    def __init__(self, context_logger: Any) -> None:
        super().__init__(logging.INFO)
        self.context_logger = context_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.ERROR:
                self.context_logger.error("%s", text)
            elif record.levelno >= logging.WARNING:
                self.context_logger.warn("%s", text)
            else:
                self.context_logger.info("%s", text)
        except Exception:
            self.handleError(record)


def attach_context_logger(context_logger: Any) -> None:
    """Route the product's records to ``context_logger`` (replacing an earlier worker's route)."""
    for name in PACKAGE_LOGGERS:
        package = logging.getLogger(name)
        for handler in [h for h in package.handlers if isinstance(h, ContextLogHandler)]:
            package.removeHandler(handler)
        package.addHandler(ContextLogHandler(context_logger))
        if package.level == logging.NOTSET or package.level > logging.INFO:
            package.setLevel(logging.INFO)


def init_worker(context: Any, create_handler: Callable[[], ModelHandler], kind: str) -> None:
    """``init_context`` body: route logs first (model loading logs too), build the handler once,
    keep it and the function kind on ``user_data``."""
    if kind not in KINDS:
        raise ValueError(f"unknown function kind {kind!r}; expected one of {KINDS}")
    attach_context_logger(context.logger)
    model_handler = create_handler()
    context.user_data.model_handler = model_handler
    context.user_data.kind = kind
    context.logger.info(f"{kind} ready: classes {list(model_handler.class_names)}")


def respond(context: Any, event: Any) -> Any:
    """``handler`` body: one event -> ``context.Response`` with the handler's status and JSON."""
    reply = context.user_data.model_handler.handle(event.body, context.user_data.kind)
    return context.Response(body=reply.body, headers={}, content_type=reply.content_type,
                            status_code=reply.status)
