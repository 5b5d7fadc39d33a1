"""barrier-serve: the same main.py handler behind HTTP answers a ``curl -d @body.json`` POST with
the very bytes, status and content type of a direct handler call."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from barrier_annotator.tools.serve_function import LocalFunction, make_event, make_server, response_bytes
from tests.serving_fakes import body, detector_function  # noqa: F401 (a fixture)

FRAME = (np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def served(detector_function) -> Iterator[tuple[LocalFunction, str]]:  # noqa: F811 (shared fixture)
    function = detector_function
    server = make_server(function, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield function, f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def direct(function: LocalFunction, data: bytes, content_type: str = "application/json") -> tuple[int, str, bytes]:
    status, kind, _, payload = response_bytes(function(make_event(data, content_type, {})))
    return status, kind, payload


def test_http_post_equals_a_direct_handler_call(served) -> None:
    function, url = served
    data = json.dumps(body(FRAME, threshold=0.0)).encode()
    over_http = post(url, data)
    assert over_http == direct(function, data)
    status, content_type, payload = over_http
    assert status == 200 and content_type == "application/json" and len(json.loads(payload)) > 0


def test_refusals_keep_their_status_over_http(served) -> None:
    function, url = served
    for data, status in ((b"not json", 400), (json.dumps({"image": "AAAA"}).encode(), 422)):
        got = post(url, data)
        assert got == direct(function, data) and got[0] == status
        assert "error" in json.loads(got[2])
    assert post(url, json.dumps(body(FRAME, threshold=0.9)).encode())[0] == 200  # still serving


def test_get_is_refused(served) -> None:
    _, url = served
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=30)
    assert info.value.code == 405


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_with_a_body_file(served, tmp_path) -> None:
    function, url = served
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(body(FRAME, threshold=0.0)))
    for headers in ([], ["-H", "Content-Type: application/json"]):  # curl's default is form-urlencoded
        result = subprocess.run(["curl", "-s", "-S", "-X", "POST", *headers, "--data-binary", f"@{body_file}",
                                 "-w", "\n%{http_code} %{content_type}", url],
                                capture_output=True, check=True, timeout=120)
        payload, _, trailer = result.stdout.rpartition(b"\n")
        status, content_type = trailer.decode().split(" ", 1)
        expected = direct(function, body_file.read_bytes())
        assert (int(status), content_type, payload) == expected


def test_a_body_over_the_limit_is_refused_and_the_reason_logged(detector_function, caplog) -> None:  # noqa: F811
    server = make_server(detector_function, "127.0.0.1", 0, max_body=1000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        with caplog.at_level(logging.WARNING, logger="barrier-serve"):
            status, _, payload = post(f"http://{host}:{port}/", json.dumps(body(FRAME)).encode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert status == 413 and "exceeds" in json.loads(payload)["error"]
    assert any(record.levelno == logging.WARNING and "413" in record.getMessage()
               and "exceeds 1000" in record.getMessage() for record in caplog.records)


def test_a_bad_content_length_is_a_400_not_a_dropped_connection(served, caplog) -> None:
    _, url = served
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "lots")
        with caplog.at_level(logging.WARNING, logger="barrier-serve"):
            connection.endheaders()
            response = connection.getresponse()
            status, payload = response.status, response.read()
    finally:
        connection.close()
    assert status == 400 and "Content-Length" in json.loads(payload)["error"]
    assert any("Content-Length" in record.getMessage() for record in caplog.records)
