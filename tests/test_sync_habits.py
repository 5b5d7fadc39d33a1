"""barrier-sync-train against the habits of a real CVAT that a tidy fake would hide (issue 13).

A real server (2.73) re-exported unchanged annotations in another order, returned uploaded
shapes with ``source="file"``, and let reviewers reopen a completed job, move it back a stage or
delete its task. The fake copies those habits, driven here with cvat-sdk as a user's script
would; every run is ``--pull-only`` (no training: tests/test_sync_loop.py trains).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config

from barrier_annotator.tools.sync_and_train import main
from tests.cvat_fake_server import FakeCvat, Fault, export_zip, synthetic_job_export
from tests.sync_sites import easy_site

TOKEN = "pat-Hb7habitsSECRETtoken"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return easy_site(tmp_path_factory.mktemp("habits"), 5, seed=31)


@pytest.fixture
def cvat(site, monkeypatch):
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", TOKEN)
    with FakeCvat(TOKEN) as server:
        server.add_task(1, "site A")
        server.add_task(2, "site B")
        for job_id, task_id, names in ((1, 1, site.names[:2]), (2, 1, site.names[2:4]), (3, 2, site.names[4:])):
            server.add_job(job_id, task_id, (0, len(names) - 1),
                           synthetic_job_export(site.annotations, site.images, names))
        yield server


@pytest.fixture
def sdk(cvat):
    """A cvat-sdk client on the fake: what reviewers' clicks and scripts do to the server."""
    client = Client(cvat.url, config=Config(status_check_period=0.01), check_server_version=False)
    client.login(AccessTokenCredentials(TOKEN))
    yield client
    client.close()


def pull(cvat: FakeCvat, workdir: Path, *extra: str) -> int:
    return main(["--host", cvat.url, "--project", "1", "--workdir", str(workdir), "--pull-only", "--retries", "2",
                 "--retry-backoff", "0", "--poll-period", "0", "--no-progress", *extra])


def manifest(workdir: Path) -> dict:
    return json.loads((workdir / "dataset" / "manifest.json").read_text())


def exported(cvat: FakeCvat, job_id: int) -> ET.Element:
    """The annotations of the job's next export, as a downloader would see them."""
    data = cvat.export_bytes(job_id, cvat.new_export(job_id, "CVAT for images 1.1"))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return ET.fromstring(archive.read("annotations.xml"))


def shape_list(root: ET.Element) -> list[tuple[str, str, str]]:
    return [(image.get("name"), shape.tag, shape.get("label")) for image in root.iter("image") for shape in image]


# ---------------------------------------------------------------- the fake's habits
def test_each_export_lists_the_shapes_in_another_order(cvat):
    first, second = shape_list(exported(cvat, 1)), shape_list(exported(cvat, 1))
    assert first != second and sorted(first) == sorted(second)


def test_an_upload_comes_back_as_source_file(cvat, sdk, site, tmp_path):
    before = cvat.jobs[1].updated
    upload = tmp_path / "annotations.xml"
    upload.write_bytes(ET.tostring(exported(cvat, 1)))
    assert {s.get("source") for s in exported(cvat, 1).iter("mask")} == {"manual"}
    sdk.jobs.retrieve(1).import_annotations("CVAT 1.1", upload, status_check_period=0.01)
    after = exported(cvat, 1)
    assert {s.get("source") for s in after.iter("mask")} == {"file"}
    assert sorted(shape_list(after)) == sorted(shape_list(ET.parse(upload).getroot()))
    assert cvat.jobs[1].updated > before
    assert cvat.requests_to("POST", "/api/jobs/1/annotations")  # through the SDK's upload protocol
    # a task-level upload replaces the annotations of every job of the task (job 2's frames: none in the file)
    sdk.tasks.retrieve(1).import_annotations("CVAT 1.1", upload, status_check_period=0.01)
    assert sorted(shape_list(exported(cvat, 1))) == sorted(shape_list(after)) and not shape_list(exported(cvat, 2))


def test_reviewers_can_reopen_move_back_and_delete(cvat, sdk):
    sdk.jobs.retrieve(1).update({"state": "in progress"})
    assert (cvat.jobs[1].stage, cvat.jobs[1].state) == ("acceptance", "in progress")
    sdk.jobs.retrieve(2).update({"stage": "validation"})  # a new stage without a state: "new", as in CVAT
    assert (cvat.jobs[2].stage, cvat.jobs[2].state) == ("validation", "new")
    with pytest.raises(ApiException) as refused:
        sdk.api_client.jobs_api.destroy(3)  # cvat-sdk's Job proxy has no remove(): CVAT keeps annotation jobs
    assert refused.value.status == 400 and "ground truth" in str(refused.value.body)
    sdk.tasks.retrieve(2).remove()
    assert 2 not in cvat.tasks and 3 not in cvat.jobs


# ---------------------------------------------------------------- what sync-and-train makes of them
def test_a_reexport_of_the_same_annotations_is_no_change(cvat, sdk, tmp_path, capsys):
    """Edited and edited back, then uploaded again by barrier-label: new order, source "file"."""
    assert pull(cvat, tmp_path) == 0
    cvat.jobs[1].updated = cvat.tick()  # an edit and its undo
    upload = tmp_path / "upload.xml"
    upload.write_bytes(ET.tostring(exported(cvat, 2)))
    sdk.jobs.retrieve(2).import_annotations("CVAT 1.1", upload, status_check_period=0.01)
    capsys.readouterr()
    before = len(cvat.log)
    assert pull(cvat, tmp_path) == 0
    out, err = capsys.readouterr()
    state = manifest(tmp_path)
    assert len(state["rounds"]) == 1 and state["pending"] == {}, err
    assert "round 1 is ready" in out  # still round 1: --pull-only never trains it
    assert [e.path for e in cvat.log[before:] if e.method == "POST" and e.path.endswith("/export")] == \
        ["/api/jobs/1/dataset/export", "/api/jobs/2/dataset/export"]  # both were downloaded again


def test_an_edited_shape_is_a_change(cvat, sdk, tmp_path):
    assert pull(cvat, tmp_path) == 0
    edited = exported(cvat, 2)
    image = edited.find("image")
    image.remove(image.find("mask"))  # a reviewer deleted one shape
    upload = tmp_path / "upload.xml"
    upload.write_bytes(ET.tostring(edited))
    sdk.jobs.retrieve(2).import_annotations("CVAT 1.1", upload, status_check_period=0.01)
    assert pull(cvat, tmp_path) == 0
    record = manifest(tmp_path)["rounds"][1]
    assert (record["changed_images"], record["new_images"], record["jobs"].keys()) == (1, 0, {"2"})


LEAVE = {
    "reopened": (lambda sdk: sdk.jobs.retrieve(3).update({"state": "in progress"}),
                 "reopened (now stage acceptance, state in progress)"),
    "moved back": (lambda sdk: sdk.jobs.retrieve(3).update({"stage": "annotation"}),
                   "moved to stage annotation (now stage annotation, state new)"),
    "task deleted": (lambda sdk: sdk.tasks.retrieve(2).remove(), "deleted in CVAT (the job or its task)"),
}


@pytest.mark.parametrize("how", list(LEAVE))
def test_a_job_that_left_the_selection_is_withdrawn(cvat, sdk, tmp_path, capsys, how):
    assert pull(cvat, tmp_path) == 0
    leave, reason = LEAVE[how]
    leave(sdk)
    capsys.readouterr()
    assert pull(cvat, tmp_path, "--dry-run") == 0
    out, _ = capsys.readouterr()
    assert f"job 3: task 2 'site B', pulled before, {reason} -> withdraw its 1 images" in out
    assert "would withdraw 1 images of 1 jobs and make round 2" in out
    assert pull(cvat, tmp_path) == 0
    err = capsys.readouterr().err
    assert f"job 3 (task 2 'site B') {reason}: its 1 images are withdrawn from the next round" in err
    state = manifest(tmp_path)
    record = state["rounds"][1]
    assert record["withdrawn_images"] == 1 and record["withdrawn_jobs"] == {
        "3": {"task_id": 2, "task_name": "site B", "images": 1, "reason": reason}}
    assert record["images"]["train"] + record["images"]["val"] == 4  # task 1's images only
    entry = state["images"]["task_2/000004.png"]
    assert entry["withdrawn"] == {"round": 2, "reason": reason} and entry["first_round"] == 1  # history kept
    xml = (tmp_path / "dataset" / record["train_xml"]).read_text() + \
        (tmp_path / "dataset" / record["val_xml"]).read_text()
    assert "task_2/" not in xml and "task_1/000000.png" in xml
    assert pull(cvat, tmp_path) == 0 and len(manifest(tmp_path)["rounds"]) == 2  # withdrawn once


def test_a_job_completed_again_returns(cvat, sdk, tmp_path):
    assert pull(cvat, tmp_path) == 0
    sdk.jobs.retrieve(3).update({"state": "in progress"})
    assert pull(cvat, tmp_path) == 0
    sdk.jobs.retrieve(3).update({"state": "completed"})
    assert pull(cvat, tmp_path) == 0
    state = manifest(tmp_path)
    record = state["rounds"][2]
    assert (record["returned_images"], record["withdrawn_images"], record["changed_images"]) == (1, 0, 0)
    assert record["images"] == state["rounds"][0]["images"]
    assert "withdrawn" not in state["images"]["task_2/000004.png"] and "withdrawn" not in state["jobs"]["3"]


def test_a_withdrawal_undone_before_any_round_is_no_change(cvat, sdk, tmp_path):
    """Job 3 reopened, the pull stops on a failed download before it seals a round, job 3 is completed
    again: the withdrawal never reached a round, so its return is no change either."""
    assert pull(cvat, tmp_path) == 0
    sdk.jobs.retrieve(3).update({"state": "in progress"})
    cvat.jobs[1].updated = cvat.tick()
    cvat.faults.append(Fault("GET", "/api/jobs/1/dataset/download", "drop", times=100))
    assert pull(cvat, tmp_path) == 3
    assert manifest(tmp_path)["pending"]["3"]["withdrawn"] == 1
    cvat.faults.clear()
    sdk.jobs.retrieve(3).update({"state": "completed"})
    assert pull(cvat, tmp_path) == 0
    state = manifest(tmp_path)
    assert len(state["rounds"]) == 1 and state["pending"] == {}
    assert "withdrawn" not in state["images"]["task_2/000004.png"]


def test_a_narrower_selection_withdraws_with_a_warning(cvat, tmp_path, caplog):
    assert pull(cvat, tmp_path) == 0
    with caplog.at_level(logging.WARNING):
        assert main(["--host", cvat.url, "--task", "2", "--workdir", str(tmp_path), "--pull-only",
                     "--no-progress", "--poll-period", "0"]) == 0
    assert "this dataset was pulled with the selection 'jobs in stage acceptance, state completed of project 1'" \
        in caplog.text
    record = manifest(tmp_path)["rounds"][1]
    assert record["withdrawn_images"] == 4 and sorted(record["withdrawn_jobs"]) == ["1", "2"]
    assert record["withdrawn_jobs"]["1"]["reason"].startswith("its task 1 is outside the selection now")


def test_an_export_with_a_broken_mask_is_refused_cleanly(cvat, tmp_path, capsys, site):
    """The digest decodes every mask: a broken RLE stops that job with a message, not a traceback."""
    with zipfile.ZipFile(io.BytesIO(cvat.jobs[1].export)) as archive:
        root = ET.fromstring(archive.read("annotations.xml"))
    root.find("image/mask").set("rle", "1, 2")
    cvat.jobs[1].export = export_zip(ET.tostring(root), {n: (site.images / n).read_bytes() for n in site.names[:2]})
    assert pull(cvat, tmp_path) == 3
    assert "job 1: unusable annotations in its export" in capsys.readouterr().err
    assert not (tmp_path / "dataset" / "manifest.json").exists() or "1" not in manifest(tmp_path)["jobs"]
