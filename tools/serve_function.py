"""Serve the CVAT Nuclio function locally, without Nuclio or Docker: ``barrier-serve``.

    barrier-serve --config-file CFG --weights W [--port 8080] [--interactor]
    curl -s -X POST -H 'Content-Type: application/json' -d @body.json http://127.0.0.1:8080/

Loads ``functions/mask2former-barrier/main.py`` by file path, runs its ``init_context`` once
with a real ``nuclio_sdk.Context`` and answers every POST with its ``handler`` on a real
``nuclio_sdk.Event``: the response bytes, status and content type are the handler's own. As in
Nuclio, a JSON body is handed over decoded (a dict), anything else as bytes. One request at a
time, like one Nuclio worker.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

try:
    import nuclio_sdk
except ImportError as error:  # pragma: no cover - depends on the install
    raise SystemExit("barrier-serve needs nuclio-sdk: pip install -e '.[serve]'") from error

from barrier_annotator.checkout import checkout_path
from mask2former.command_line import LOG_FORMAT, OPTS_VARIABLE, add_model_arguments

logger = logging.getLogger("barrier-serve")

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # the function.yaml's maxRequestBodySize
TRIGGER = nuclio_sdk.TriggerInfo("http", "myHttpTrigger")


@contextlib.contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def default_function_dir() -> Path:
    """``functions/mask2former-barrier`` of the source checkout."""
    return checkout_path("functions/mask2former-barrier")


def load_function_module(function_dir: str | Path | None = None) -> ModuleType:
    """Import ``main.py`` by path, with its folder importable as Nuclio makes it (for ``model_handler``)."""
    function_dir = Path(function_dir or default_function_dir()).resolve()
    main_file = function_dir / "main.py"
    if not main_file.is_file():
        raise FileNotFoundError(f"no main.py in {function_dir}")
    if str(function_dir) not in sys.path:
        sys.path.insert(0, str(function_dir))
    spec = importlib.util.spec_from_file_location(f"nuclio_function_{abs(hash(str(function_dir)))}", main_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_context(worker_id: int = 0) -> nuclio_sdk.Context:
    """A worker context as Nuclio builds one: logger, platform, worker id, trigger, user data."""
    nuclio_logger = nuclio_sdk.Logger(logging.INFO, name="barrier-serve.function")
    context = nuclio_sdk.Context(logger=nuclio_logger, platform=nuclio_sdk.Platform("local", namespace="cvat"),
                                 worker_id=worker_id, trigger=TRIGGER)
    context.user_data = SimpleNamespace()
    return context


def make_event(body: bytes, content_type: str, headers: Mapping[str, str], path: str = "/") -> nuclio_sdk.Event:
    """An HTTP event as Nuclio hands it to Python: JSON bodies decoded, other bodies as bytes."""
    value: Any = body
    if content_type.split(";")[0].strip().lower() == "application/json":
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
            value = json.loads(body.decode("utf-8"))
    return nuclio_sdk.Event(body=value, content_type=content_type, headers=dict(headers), method="POST",
                            path=path, size=len(body), trigger=TRIGGER)


class LocalFunction:
    """One initialised function worker: ``main.init_context`` done, ``main.handler`` ready."""

    def __init__(self, function_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.module = load_function_module(function_dir)
        self.context = make_context()
        with _environment(env or {}):
            self.module.init_context(self.context)

    def __call__(self, event: nuclio_sdk.Event) -> nuclio_sdk.Response:
        return self.module.handler(self.context, event)


def response_bytes(response: Any) -> tuple[int, str, dict[str, str], bytes]:
    """Status, content type, headers and body bytes of what a handler returned."""
    if not isinstance(response, nuclio_sdk.Response):
        response = nuclio_sdk.Response(body=response)
    body = response.body
    content_type = response.content_type
    if isinstance(body, (dict, list)):
        body, content_type = json.dumps(body), "application/json"
    data = body if isinstance(body, bytes) else str("" if body is None else body).encode("utf-8")
    return int(response.status_code), content_type, {str(k): str(v) for k, v in response.headers.items()}, data


def make_server(function: LocalFunction, host: str = "127.0.0.1", port: int = 8080,
                max_body: int = DEFAULT_MAX_BODY) -> HTTPServer:
    """An HTTP server answering every POST with ``function`` (port 0 picks a free port)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "barrier-serve"

        def _send(self, status: int, content_type: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, status: HTTPStatus, message: str) -> None:
            # refused before the function sees the request: logged here, as Nuclio's trigger would
            logger.warning("request refused (%d): %s", status, message)
            self._send(status, "application/json", json.dumps({"error": message}).encode())

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                self._refuse(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {self.headers['Content-Length']!r:.40}")
                return
            if length > max_body:
                self.close_connection = True
                self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {max_body}")
                return
            body = self.rfile.read(length)
            event = make_event(body, self.headers.get("Content-Type", ""), dict(self.headers.items()), self.path)
            status, content_type, headers, data = response_bytes(function(event))
            self._send(status, content_type, data, headers)

        def do_GET(self) -> None:
            self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "POST a JSON body: {\"image\": <base64>, ...}")

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

    return HTTPServer((host, port), Handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interactor", action="store_true", help="serve the interactor instead of the detector")
    parser.add_argument("--function-dir", type=Path, default=None,
                        help="folder with main.py (default: functions/mask2former-barrier of the source checkout)")
    add_model_arguments(parser, config_required=True, threshold=False)
    return parser


def function_environment(args: argparse.Namespace) -> dict[str, str]:
    """The options as the function's environment: what function.yaml would set in Nuclio."""
    env = {"BARRIER_CONFIG": args.config_file, "BARRIER_WEIGHTS": args.weights or "", "BARRIER_DEVICE": args.device,
           "BARRIER_FUNCTION_KIND": "interactor" if args.interactor else "detector"}
    if args.backend:
        env["BARRIER_BACKEND"] = args.backend
    if args.precision:
        env["BARRIER_PRECISION"] = args.precision
    if args.opts:
        env[OPTS_VARIABLE] = shlex.join(args.opts)
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)  # the function's context logger ("barrier-serve.function") logs through it
    logger.setLevel(logging.INFO)
    logger.propagate = False
    env = function_environment(args)
    try:
        function = LocalFunction(args.function_dir or default_function_dir(), env)
        server = make_server(function, args.host, args.port)
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 2
    host, port = server.server_address[:2]
    logger.info("serving %s on http://%s:%d/ (Ctrl+C to stop)", env["BARRIER_FUNCTION_KIND"], host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
