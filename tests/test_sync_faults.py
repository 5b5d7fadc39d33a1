"""barrier-sync-train against a misbehaving CVAT: dropped connections, 5xx, truncated or corrupt
downloads, unsafe zips, bad credentials. Pulls only (--pull-only / --dry-run): no training here."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from barrier_annotator.tools.sync_and_train import main
from barrier_annotator.training.data.synthetic import generate_dataset
from tests.cvat_fake_server import FakeCvat, Fault, export_zip, synthetic_job_export

TOKEN = "pat-Zq81faultsSECRETvalue"
PASSWORD = "pw-correct-horse-SECRET"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    paths = generate_dataset(root, num_train=6, num_val=0, image_size=64, seed=21, progress=False,
                             write_cvat_xml=True)
    names = sorted(p.name for p in paths.images["train"].iterdir())
    return paths, names


@pytest.fixture
def cvat(site, monkeypatch):
    paths, names = site
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", TOKEN)
    monkeypatch.delenv("CVAT_PASSWORD", raising=False)
    with FakeCvat(TOKEN, users={"alice": PASSWORD}) as server:
        server.add_task(1, "site A")
        for job_id, chunk in ((1, names[:3]), (2, names[3:])):
            server.add_job(job_id, 1, (0, 2) if job_id == 1 else (3, 5),
                           synthetic_job_export(paths.cvat_xml["train"], paths.images["train"], chunk))
        yield server


def run(cvat: FakeCvat, workdir: Path, *extra: str, host: str | None = None) -> int:
    return main(["--host", host or cvat.url, "--project", "1", "--workdir", str(workdir), "--pull-only",
                 "--retries", "4", "--retry-backoff", "0", "--poll-period", "0", "--no-progress", *extra])


def dataset_files(workdir: Path) -> list[Path]:
    root = workdir / "dataset"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def manifest(workdir: Path) -> dict:
    path = workdir / "dataset" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_dropped_connections_and_5xx_are_retried(cvat, tmp_path, capsys):
    download = "/api/jobs/1/dataset/download"
    cvat.faults += [Fault("POST", "/api/jobs/1/dataset/export", "drop"),
                    Fault("GET", "/api/requests/", "status", 503),
                    Fault("GET", "/api/jobs", "status", 502),
                    Fault("GET", download, "truncate"),          # connection cut mid-body
                    Fault("GET", download, "truncate-unsized"),  # ... without Content-Length: a short zip
                    Fault("GET", download, "garbage"),           # a proxy's error page with status 200
                    Fault("GET", download, "status", 500)]
    assert run(cvat, tmp_path, "--retries", "5") == 0
    err = capsys.readouterr().err
    assert "connection dropped" in err and "HTTP 503" in err and "not a complete zip file" in err
    assert len(cvat.requests_to("GET", download)) == 5
    images = manifest(tmp_path)["images"]
    assert len(images) == 6 and manifest(tmp_path)["rounds"][0]["new_images"] == 6
    for entry in images.values():
        data = (tmp_path / "dataset" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert not (tmp_path / "staging").exists()
    assert not [p for p in dataset_files(tmp_path) if ".tmp" in p.name]


def test_a_download_that_keeps_failing_never_enters_the_dataset(cvat, tmp_path, capsys):
    cvat.faults.append(Fault("GET", "/api/jobs/1/dataset/download", "truncate", times=100))
    assert run(cvat, tmp_path) == 3
    err = capsys.readouterr().err
    assert "job 1" in err and "failed 4 times" in err and "Nothing of this job entered the dataset" in err
    assert len(cvat.requests_to("GET", "/api/jobs/1/dataset/download")) == 4
    assert dataset_files(tmp_path) == []  # no image, no annotation file, no manifest
    assert not (tmp_path / "staging").exists()


def test_an_interrupted_pull_keeps_finished_jobs_and_continues(cvat, tmp_path, capsys):
    cvat.faults.append(Fault("GET", "/api/jobs/2/dataset/download", "drop", times=100))
    assert run(cvat, tmp_path) == 3
    state = manifest(tmp_path)
    assert list(state["jobs"]) == ["1"] and state["rounds"] == [] and list(state["pending"]) == ["1"]
    cvat.faults.clear()
    before = len(cvat.log)
    assert run(cvat, tmp_path) == 0, capsys.readouterr().err
    exports = [e.path for e in cvat.log[before:] if e.method == "POST"]
    assert exports == ["/api/jobs/2/dataset/export"]  # job 1 is not downloaded again
    state = manifest(tmp_path)
    assert len(state["rounds"]) == 1 and state["rounds"][0]["new_images"] == 6 and state["pending"] == {}


def test_an_unsafe_export_is_refused_without_retrying(cvat, tmp_path, capsys):
    cvat.jobs[1].export = export_zip(b"<annotations><version>1.1</version></annotations>",
                                     {"../../evil.jpg": b"x"})
    assert run(cvat, tmp_path) == 3
    assert "unsafe member name" in capsys.readouterr().err
    assert len(cvat.requests_to("GET", "/api/jobs/1/dataset/download")) == 1
    assert dataset_files(tmp_path) == [] and not (tmp_path.parent / "evil.jpg").exists()


def test_a_bad_token_fails_clearly_without_showing_it(cvat, tmp_path, capsys, monkeypatch):
    wrong = "pat-wrong-SECRET-0123456789"
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", wrong)
    assert run(cvat, tmp_path, "--verbose") == 3  # debug logging of the SDK and urllib3 on
    out, err = capsys.readouterr()
    assert "rejected the access token in CVAT_ACCESS_TOKEN (HTTP 401" in err
    assert len(cvat.requests_to("GET", "/api/users/self")) == 1  # 401 is not retried
    assert cvat.requests_to("GET", "/api/users/self")[0].headers["Authorization"] == f"Bearer {wrong}"
    for text in (out, err, (tmp_path / "sync.log").read_text()):
        assert wrong not in text and "DEBUG" in err
    assert dataset_files(tmp_path) == []


def test_password_login_never_shows_the_password(cvat, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_ACCESS_TOKEN")
    monkeypatch.setenv("CVAT_PASSWORD", PASSWORD)
    assert run(cvat, tmp_path, "--auth", "alice", "--dry-run", "--verbose") == 0
    out, err = capsys.readouterr()
    assert "job 1" in out and PASSWORD not in out + err
    assert cvat.requests_to("POST", "/api/auth/logout")  # the session is closed
    monkeypatch.setenv("CVAT_PASSWORD", PASSWORD + "-typo")
    assert run(cvat, tmp_path, "--auth", "alice", "--verbose") == 3
    out, err = capsys.readouterr()
    assert "rejected the password of 'alice'" in err and PASSWORD not in out + err


def test_missing_credentials_are_explained(cvat, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_ACCESS_TOKEN")
    assert run(cvat, tmp_path) == 3
    assert "set CVAT_ACCESS_TOKEN" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert run(cvat, tmp_path, "--auth", "alice") == 3  # no terminal: no prompt, a clear message
    assert "set CVAT_PASSWORD" in capsys.readouterr().err
    assert not cvat.log


def test_an_unreachable_server_fails_after_the_retries(cvat, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run(cvat, tmp_path, host=f"http://127.0.0.1:{port}") == 3
    err = capsys.readouterr().err
    assert "cannot talk to CVAT" in err and "failed 4 times" in err and "cannot reach the server" in err


def test_an_interrupted_run_is_abandoned_and_the_next_starts_clean(cvat, tmp_path, capsys):
    from barrier_annotator.sync.run_state import RunState, new_run

    interrupted = new_run(tmp_path, 1)
    interrupted.record("pulled", round=1, jobs=[])  # then killed while training
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "job_1.zip.tmp0").write_bytes(b"half a download")
    assert run(cvat, tmp_path) == 0
    err = capsys.readouterr().err
    assert f"run {interrupted.id} stopped (running) after 'pulled'; starting clean" in err
    assert RunState.load(interrupted.dir).status == "abandoned"
    assert not (tmp_path / "staging").exists() and len(manifest(tmp_path)["rounds"]) == 1


def test_the_organization_is_sent_with_every_request(cvat, tmp_path, capsys):
    assert run(cvat, tmp_path, "--dry-run", "--org", "acme") == 0, capsys.readouterr().err
    listed = cvat.requests_to("GET", "/api/jobs")
    assert listed and all(entry.headers.get("X-Organization") == "acme" for entry in listed)
    assert not (tmp_path / "dataset").exists()  # a dry run writes nothing
