"""barrier-select and ``barrier-sync-train --select`` against the fake CVAT (tests/cvat_fake_server.py).

Project 1 holds task 1 (job 1 completed, job 2 in progress) and task 2 (job 3 new). Job 3 also holds
a copy (same bytes, another name) of a frame of the completed job 1.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from barrier_annotator.cvat import CvatDocument, LabelSpec
from barrier_annotator.cvat.masks import decode_sdk_mask
from barrier_annotator.selection.after_round import RoundSelection, select_after_round
from barrier_annotator.selection.frames import content_key
from barrier_annotator.selection.scorer import FrameScorer
from barrier_annotator.sync.cvat_client import JobInfo, Selection, connect
from barrier_annotator.sync.dataset_store import DatasetStore
from barrier_annotator.sync.deploy import Deployment
from barrier_annotator.sync.export import ExportSettings
from barrier_annotator.sync.report import render_markdown
from barrier_annotator.sync.retry import RetryPolicy
from barrier_annotator.tools import select_frames
from barrier_annotator.training.data.synthetic import CLASS_NAMES, generate_dataset
from mask2former.config import load_config
from mask2former.io import decode_image
from mask2former.predictor import Predictor
from tests.conftest import TINY_CONFIG
from tests.cvat_fake_server import FakeCvat, export_zip

TOKEN = "pat-selectTEST0token"
SIZE_OPTS = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "112", "TEST.DETECTIONS_PER_IMAGE", "8"]
THRESHOLD = 0.2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("site")
    generate_dataset(root, num_train=12, num_val=0, image_size=64, progress=False)
    return {path.name: path.read_bytes() for path in sorted((root / "images" / "train").iterdir())}


def job_export(images: dict[str, bytes], *, labelled: bool = False) -> bytes:
    """A job's CVAT for images 1.1 export; ``labelled``: one manual mask per frame."""
    document = CvatDocument.new([LabelSpec(name) for name in CLASS_NAMES], task_name="site")
    for index, (name, data) in enumerate(images.items()):
        height, width = decode_image(data).shape[:2]
        entry = document.add_image(name, width, height, image_id=index)
        if labelled:
            entry.add_mask_rle("toeboard", [0, 4], (0, 0, 2, 2), source="manual")
    return export_zip(document.to_bytes(), images)


@pytest.fixture()
def cvat(frames, monkeypatch):
    names = list(frames)
    with FakeCvat(TOKEN) as server:
        monkeypatch.setenv("CVAT_ACCESS_TOKEN", TOKEN)
        monkeypatch.delenv("CVAT_PASSWORD", raising=False)
        server.set_labels(1, [(name, "mask") for name in CLASS_NAMES])
        server.add_task(1, "site A")
        server.add_task(2, "site B")
        server.add_job(1, 1, (0, 3), job_export({n: frames[n] for n in names[:4]}, labelled=True))
        server.add_job(2, 1, (4, 7), job_export({n: frames[n] for n in names[4:8]}), stage="annotation",
                       state="in progress")
        server.add_job(3, 2, (0, 4), job_export({**{n: frames[n] for n in names[8:]}, "copy_of_first.jpg":
                                                 frames[names[0]]}), stage="annotation", state="new")
        yield server


def cli(cvat: FakeCvat, output: Path, weights: Path, *extra: str) -> list[str]:
    return ["--host", cvat.url, "--project", "1", "--output", str(output), "--config-file", str(TINY_CONFIG),
            "--weights", str(weights), "--device", "cpu", "--backend", "torch", "--confidence-threshold",
            str(THRESHOLD), "--workers", "1", "--no-progress", "--poll-period", "0.01", "--retry-backoff", "0.01",
            *extra, "--opts", *SIZE_OPTS]


def selection(output: Path) -> dict:
    return json.loads((output / "selection.json").read_text())


def client_for(cvat: FakeCvat):
    from barrier_annotator.sync.cvat_client import Credentials

    return connect(cvat.url, Credentials(TOKEN), policy=RetryPolicy(attempts=1), status_check_period=0.01)


def test_frames_of_completed_jobs_are_never_chosen(cvat, frames, weights, tmp_path):
    output = tmp_path / "out"
    assert select_frames.main(cli(cvat, output, weights, "--count", "50", "--strategy", "random")) == 0
    chosen = {row["key"] for row in selection(output)["chosen"]}
    completed = {content_key(frames[name]) for name in list(frames)[:4]}
    open_frames = {content_key(frames[name]) for name in list(frames)[4:]}
    assert chosen == open_frames  # the copy of a completed frame in job 3 is not chosen either
    counts = selection(output)["counts"]
    assert counts["labelled"] == 4 and counts["excluded_labelled"] == 1 and not chosen & completed


def test_created_task_holds_exactly_the_chosen_frames_and_their_prelabels(cvat, frames, tiny_cfg, weights,
                                                                          tmp_path):
    output = tmp_path / "out"
    assert select_frames.main(cli(cvat, output, weights, "--count", "3", "--create-task", "label next")) == 0
    rows = selection(output)["chosen"]
    new_tasks = [task for task in cvat.tasks.values() if task.name == "label next"]
    assert len(new_tasks) == 1 and new_tasks[0].project_id == 1
    task_id = new_tasks[0].id
    [job] = cvat.task_jobs(task_id)
    assert (job.stage, job.state) == ("annotation", "new")
    with zipfile.ZipFile(io.BytesIO(job.export)) as archive:
        stored = {name[len("images/"):]: archive.read(name) for name in archive.namelist()
                  if name.startswith("images/")}
    assert sorted(content_key(data) for data in stored.values()) == sorted(row["key"] for row in rows)
    assert [name[:4] for name in sorted(stored)] == ["0001", "0002", "0003"]  # rank order in CVAT

    client = client_for(cvat)
    try:
        task = client.tasks.retrieve(task_id)
        names = [frame.name for frame in task.get_frames_info()]
        shapes = task.get_annotations().shapes
        label_names = {label.id: label.name for label in task.get_labels()}
    finally:
        client.close()
    assert names == sorted(stored)
    assert shapes and {shape.source for shape in shapes} == {"semi-auto"}
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(SIZE_OPTS)
    scorer = FrameScorer(Predictor(cfg, weights=str(weights), device="cpu", backend="torch",
                                   score_threshold=THRESHOLD))
    for frame, name in enumerate(names):
        instances = scorer.instances(decode_image(stored[name]))
        mine = [shape for shape in shapes if shape.frame == frame]
        assert sorted(label_names[s.label_id] for s in mine) == sorted(instances.labels)
        for shape in mine:
            crop, (x0, y0, x1, y1) = decode_sdk_mask([int(v) for v in shape.points])
            mask = np.zeros(instances.image_size, bool)
            mask[y0:y1, x0:x1] = crop
            assert any((mask == instances.masks[i]).all() for i in range(len(instances))), (name, shape.label_id)
    ledger = json.loads((output / "chosen.json").read_text())
    [run] = ledger["selections"].values()
    assert run["task"]["status"] == "created" and run["task"]["id"] == task_id

    # the next selection never chooses them again (its own task, other frames)
    assert select_frames.main(cli(cvat, output, weights, "--count", "3", "--create-task", "label after")) == 0
    again = {row["key"] for row in selection(output)["chosen"]}
    assert len(again) == 3 and not again & {row["key"] for row in rows}


def test_fake_cvat_refuses_what_a_real_one_refuses(cvat, frames, tmp_path):
    from cvat_sdk.api_client import models
    from cvat_sdk.api_client.exceptions import ApiException
    from cvat_sdk.core.exceptions import BackgroundRequestException

    client = client_for(cvat)
    try:
        with pytest.raises(ApiException) as error:  # project and labels together
            client.tasks.create(models.TaskWriteRequest(name="x", project_id=1,
                                                        labels=[models.PatchedLabelRequest(name="a")]))
        assert error.value.status == 400
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image")
        task = client.tasks.create(models.TaskWriteRequest(name="bad", project_id=1))
        with pytest.raises(BackgroundRequestException, match="Could not read the media"):
            task.upload_data([str(bad)], params={"image_quality": 70})
        good = tmp_path / "b.jpg"
        good.write_bytes(next(iter(frames.values())))
        (tmp_path / "a.jpg").write_bytes(list(frames.values())[1])
        task = client.tasks.create(models.TaskWriteRequest(name="good", project_id=1))
        task.upload_data([str(good), str(tmp_path / "a.jpg")], params={"image_quality": 70})
        assert [frame.name for frame in task.get_frames_info()] == ["a.jpg", "b.jpg"]  # lexicographical
        with pytest.raises(ApiException):  # data is added once
            task.upload_data([str(good)], params={"image_quality": 70})

        from cvat_sdk.core.proxies.tasks import ResourceType
        from cvat_sdk.core.uploading import DataUploader

        cvat.share["site/c.jpg"] = list(frames.values())[2]
        shared = client.tasks.create(models.TaskWriteRequest(name="shared", project_id=1))
        shared.upload_data(["site/c.jpg"], resource_type=ResourceType.SHARE, params={"image_quality": 70})
        assert [frame.name for frame in shared.get_frames_info()] == ["c.jpg"]
        big = client.tasks.create(models.TaskWriteRequest(name="big files", project_id=1))
        url = client.api_map.make_endpoint_url(client.api_client.tasks_api.create_data_endpoint.path,
                                               kwsub={"id": big.id})
        answer = DataUploader(client, max_request_size=16).upload_files(  # every file by TUS
            url, [good, tmp_path / "a.jpg"], image_quality=70, sorting_method="predefined")
        client.wait_for_completion(json.loads(answer.data)["rq_id"], status_check_period=0.01)
        big.fetch()
        assert [frame.name for frame in big.get_frames_info()] == ["b.jpg", "a.jpg"]  # the upload order kept
        [job] = cvat.task_jobs(big.id)
        with zipfile.ZipFile(io.BytesIO(job.export)) as archive:
            assert archive.read("images/b.jpg") == good.read_bytes()
    finally:
        client.close()


def _job(job_id: int, task_id: int, updated: str) -> JobInfo:
    return JobInfo(job_id, task_id, f"task {task_id}", 1, "acceptance", "completed", updated, 0, 1)


def test_a_frame_labelled_twice_enters_the_training_set_once(frames, tmp_path):
    """Frame A in its original task, and again (renamed by barrier-select) in the task made of it."""
    first, second = list(frames)[:2]
    original = tmp_path / "job1.zip"
    original.write_bytes(job_export({first: frames[first], second: frames[second]}))
    relabelled = CvatDocument.new([LabelSpec(name) for name in CLASS_NAMES])
    entry = relabelled.add_image(f"0001_{first}", 64, 48, image_id=0)
    entry.add_mask_rle("rail_top", [2, 2], (0, 0, 2, 2), source="semi-auto")
    again = tmp_path / "job7.zip"
    again.write_bytes(export_zip(relabelled.to_bytes(), {f"0001_{first}": frames[first]}))
    store = DatasetStore(tmp_path / "dataset")
    store.ingest(_job(1, 1, "2026-01-01T00:00:00Z"), original, 50)
    store.ingest(_job(7, 9, "2026-02-01T00:00:00Z"), again, 50)
    record = store.seal_round()
    assert record is not None
    images = {}
    for split in ("train", "val"):
        for image in CvatDocument.load(store.root / record[f"{split}_xml"]).images:
            images[image.name] = image
    keys = [store.manifest["images"][name]["sha256"] for name in images]
    assert sorted(keys) == sorted({content_key(frames[first]), content_key(frames[second])})  # once each
    [twice] = [name for name in images if store.manifest["images"][name]["sha256"] == content_key(frames[first])]
    assert [(s.label, s.source) for s in images[twice].shapes()] == [("rail_top", "semi-auto")]  # the latest labels
    assert list(record["duplicate_images"].values()) == [twice]


def test_sync_select_after_a_round_chooses_and_creates_the_task(cvat, frames, tiny_cfg, weights, tmp_path):
    config = tmp_path / "deployed.yaml"
    cfg = tiny_cfg.clone()
    cfg.merge_from_list([*SIZE_OPTS, "DEPLOY.SCORE_THRESHOLD", str(THRESHOLD)])
    config.write_text(cfg.dump())
    assert load_config(str(config)).INPUT.MIN_SIZE_TEST == 64
    deployed = Deployment("run-1", 1, str(weights), "", str(config))
    labelled = {content_key(frames[name]) for name in list(frames)[4:6]}  # already in the training set
    client = client_for(cvat)
    try:
        common = {"workdir": tmp_path / "work", "selection": Selection((1,), (), "acceptance", "completed"),
                  "round_number": 2, "labelled_keys": labelled, "retry": RetryPolicy(attempts=1, backoff=0.01),
                  "export": ExportSettings(poll_period=0.01, progress=False), "progress": False}
        nothing = select_after_round(client, RoundSelection(2, backend="torch"), deployed=None, **common)
        assert nothing["chosen"] == [] and "no model is deployed" in nothing["reason"]
        info = select_after_round(client, RoundSelection(2, backend="torch"), deployed=deployed, **common)
    finally:
        client.close()
    keys = {row["key"] for row in info["chosen"]}
    assert len(keys) == 2 and not keys & labelled
    assert not keys & {content_key(frames[name]) for name in list(frames)[:4]}
    assert info["task"]["status"] == "created" and info["task"]["name"] == "barrier-select round 2"
    assert cvat.tasks[info["task"]["id"]].project_id == 1
    markdown = render_markdown({"selection": info}, CLASS_NAMES)
    assert "## Next frames to label (--select)" in markdown
    assert all(row["frame"] in markdown and row["why"] in markdown for row in info["chosen"])


def test_sync_train_select_options_reach_the_run():
    from barrier_annotator.tools.sync_and_train import build_parser, options_from_args

    args = build_parser().parse_args(["--host", "http://x", "--project", "1", "--workdir", "w", "--select", "20",
                                      "--strategy", "diversity"])
    step = options_from_args(args).after_round
    assert (step.keywords["request"].count, step.keywords["request"].strategy) == (20, "diversity")
    no_select = build_parser().parse_args(["--host", "http://x", "--project", "1", "--workdir", "w"])
    assert options_from_args(no_select).after_round is None


def test_a_task_creation_cut_off_is_finished_by_the_next_run_not_repeated(cvat, weights, tmp_path):
    from tests.cvat_fake_server import Fault

    output = tmp_path / "out"
    cvat.faults.append(Fault("PUT", "/api/tasks/", "status", status=500))  # the pre-labels never arrive
    assert select_frames.main(cli(cvat, output, weights, "--count", "2", "--create-task", "next")) == 3
    [run] = json.loads((output / "chosen.json").read_text())["selections"].values()
    assert run["task"]["status"] == "frames_uploaded"
    first = {row["key"] for row in selection(output)["chosen"]}
    assert select_frames.main(cli(cvat, output, weights, "--count", "2", "--create-task", "next")) == 0
    tasks = [task for task in cvat.tasks.values() if task.name == "next"]
    assert len(tasks) == 1  # finished, not created twice
    [run] = json.loads((output / "chosen.json").read_text())["selections"].values()
    assert run["task"]["status"] == "created" and run["task"]["id"] == tasks[0].id
    assert {row["key"] for row in selection(output)["chosen"]} == first  # no new choice was made


def test_sync_loop_select_step_is_recorded_in_the_run_and_kept_on_resume(cvat, frames, tiny_cfg, weights, tmp_path):
    from barrier_annotator.sync import loop
    from barrier_annotator.sync.deploy import record_deployment
    from barrier_annotator.sync.options import SyncOptions
    from barrier_annotator.sync.run_state import RunState, new_run
    from mask2former.utils import file_sha256

    workdir = tmp_path / "work"
    config = tmp_path / "deployed.yaml"
    cfg = tiny_cfg.clone()
    cfg.merge_from_list([*SIZE_OPTS, "DEPLOY.SCORE_THRESHOLD", str(THRESHOLD)])
    config.write_text(cfg.dump())
    workdir.mkdir()
    record_deployment(workdir, Deployment("run-0", 1, str(weights), file_sha256(weights), str(config)))
    options = SyncOptions(host=cvat.url, workdir=workdir, selection=Selection((1,), (), "acceptance", "completed"),
                          retry=RetryPolicy(attempts=1, backoff=0.01), progress=False,
                          after_round=functools.partial(select_after_round, request=RoundSelection(
                              3, "diversity", backend="torch")),
                          export=ExportSettings(poll_period=0.01, progress=False))
    store = DatasetStore(workdir / "dataset")
    run = new_run(workdir, 1)
    info = loop._select(options, store, run, 1)
    assert "error" not in info and len(info["chosen"]) == 3 and info["strategy"] == "diversity"
    assert info["task"]["status"] == "created"
    tasks_before = len(cvat.tasks)
    again = loop._select(options, store, RunState.load(run.dir), 1)  # a resumed run keeps its choice
    assert again == json.loads(json.dumps(info)) and len(cvat.tasks) == tasks_before
    assert "Chose 3 frames for CVAT task" in loop._selection_summary(info)
