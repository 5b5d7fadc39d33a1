"""barrier-sync-train end to end against a fake CVAT on loopback, with real (tiny) training.

One module fixture plays the rounds of the labelling loop in order and records each; every test
checks one round. The rounds:

0. ``--dry-run`` before anything exists
1. first round: 2 finished jobs pulled, tiny model trained, no deployed model -> deployed
2. rerun, nothing changed in CVAT -> nothing done
3. a third job is finished -> only it is pulled; candidate vs deployed on the same val -> redeployed
4. an annotator corrects job 1 -> pulled; training fails (bad init weights) -> deployed model untouched
5. ``--resume`` of that run with a candidate that fails the quality gate -> not deployed
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_CONFIG
from tests.cvat_fake_server import EPOCH, FakeCvat, synthetic_job_export
from tools.sync_and_train import main
from training.data.cvat_xml import load_cvat_xml
from training.data.synthetic import CLASS_NAMES, generate_dataset
from training.sync.dataset_store import split_of

TOKEN = "pat-9f3Kq7ZsyncSECRETtoken"
VAL_PERCENT = 30
TINY_OPTS = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001",
             "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(1000,)", "SOLVER.CHECKPOINT_PERIOD", "1000",
             "TEST.EVAL_PERIOD", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
             "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
             "DATALOADER.NUM_WORKERS", "0", "SEED", "7"]
FAKE_DEPLOY = """#!/bin/sh
echo "ARGS $*" >> "{log}"
echo "TOKEN ${{CVAT_ACCESS_TOKEN:-unset}}" >> "{log}"
"""


@dataclass
class Step:
    code: int
    stdout: str
    stderr: str
    requests: list = field(default_factory=list)  # what the fake CVAT saw during this call
    deploy_calls: list[str] = field(default_factory=list)
    deployed_json: bytes | None = None
    states: dict[str, dict] = field(default_factory=dict)  # run id -> state.json after this call
    workdir_exists: bool = True


@dataclass
class Loop:
    cvat: FakeCvat
    workdir: Path
    deploy_log: Path
    steps: dict[str, Step]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> Loop:
    root = tmp_path_factory.mktemp("sync_loop")
    site_a = generate_dataset(root / "site_a", num_train=8, num_val=0, image_size=96, seed=11, progress=False,
                              write_cvat_xml=True)
    site_b = generate_dataset(root / "site_b", num_train=3, num_val=0, image_size=96, seed=12, progress=False,
                              write_cvat_xml=True)
    a_names = sorted(p.name for p in site_a.images["train"].iterdir())
    b_names = sorted(p.name for p in site_b.images["train"].iterdir())
    # The split is a pure function of the image bytes: the scenario needs val images in round 1.
    a_splits = [split_of(_sha(site_a.images["train"] / n), VAL_PERCENT) for n in a_names]
    assert "val" in a_splits and "train" in a_splits, a_splits

    def export(site, names, **kw):
        return synthetic_job_export(site.cvat_xml["train"], site.images["train"], names, **kw)

    deploy_log = root / "deploy_calls.log"
    script = root / "fake_deploy.sh"
    script.write_text(FAKE_DEPLOY.format(log=deploy_log))
    script.chmod(0o755)
    workdir = root / "work"
    base = ["--project", "1", "--workdir", str(workdir), "--config-file", str(TINY_CONFIG),
            "--deploy-script", str(script), "--val-percent", str(VAL_PERCENT), "--iterations", "2",
            "--retry-backoff", "0.01", "--poll-period", "0.01", "--no-progress"]
    steps: dict[str, Step] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model: one thread is as fast and immune to spin-waits on 2 cores
    with FakeCvat(TOKEN) as cvat, pytest.MonkeyPatch.context() as env:
        env.setenv("CVAT_ACCESS_TOKEN", TOKEN)
        env.delenv("CVAT_PASSWORD", raising=False)
        cvat.add_task(1, "site A")
        cvat.add_task(2, "site B")
        cvat.add_job(1, 1, (0, 3), export(site_a, a_names[:4]))
        cvat.add_job(2, 1, (4, 7), export(site_a, a_names[4:]))
        job3 = cvat.add_job(3, 2, (0, 2), export(site_b, b_names), stage="annotation", state="in progress")

        def play(name: str, *extra: str, opts: list[str] = TINY_OPTS) -> None:
            before = len(cvat.log)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*base, "--host", cvat.url, *extra, "--opts", *opts])
            deployed = workdir / "deployed.json"
            states = {p.parent.name: json.loads(p.read_text()) for p in workdir.glob("runs/*/state.json")}
            for run_id, state in states.items():
                report = workdir / "runs" / run_id / "report.json"
                state["report_outcome"] = json.loads(report.read_text())["outcome"] if report.exists() else None
            steps[name] = Step(code, out.getvalue(), err.getvalue(), cvat.log[before:],
                               deploy_log.read_text().splitlines() if deploy_log.exists() else [],
                               deployed.read_bytes() if deployed.exists() else None, states, workdir.exists())

        play("dry_run", "--dry-run")
        play("first")
        play("nothing_new")
        job3.stage, job3.state, job3.updated = "acceptance", "completed", EPOCH + timedelta(days=1)
        play("new_data", "--margin", "-100")  # tiny models are ~0 AP: accept so the redeploy path runs
        job1 = cvat.jobs[1]
        job1.export, job1.updated = export(site_a, a_names[:4], drop_shapes=1), EPOCH + timedelta(days=2)
        play("training_fails", "--init-weights", str(root / "missing.pth"))
        play("worse_resumed", "--resume", "--init-weights", "none", "--iterations", "1",
             "--class-floor", "rail_top=50")
    torch.set_num_threads(threads)
    return Loop(cvat, workdir, deploy_log, steps)


def _runs(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "runs").iterdir() if p.is_dir())


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _exports(step: Step) -> list[int]:
    return [int(r.path.split("/")[3]) for r in step.requests if r.method == "POST" and r.path.endswith("/export")]


def test_dry_run_shows_the_plan_and_writes_nothing(loop):
    step = loop.steps["dry_run"]
    assert step.code == 0, step.stderr
    assert "job 1: task 1 'site A', frames 0-3" in step.stdout and "pull (new)" in step.stdout
    assert "job 3" not in step.stdout  # still being annotated: not selected
    assert "would finetune" in step.stdout and "fake_deploy.sh --weights" in step.stdout
    assert _exports(step) == []
    assert step.deployed_json is None and not step.deploy_calls and not step.workdir_exists
    assert not any(entry.path.startswith("/api/requests") for entry in step.requests)


def test_first_round_pulls_trains_gates_and_deploys(loop):
    step = loop.steps["first"]
    assert step.code == 0, step.stderr
    assert sorted(_exports(step)) == [1, 2]
    assert "round 1" in step.stdout and "-> deployed" in step.stdout
    run = _runs(loop.workdir)[0]
    report = _report(run)
    assert report["decision"]["deploy"] is True and report["decision"]["reference"] == "none"
    assert report["dataset"]["new_images"] == 8 and report["dataset"]["round"] == 1
    assert set(report["metrics"]["candidate"]) >= {"segm/AP", *(f"segm/AP-{c}" for c in CLASS_NAMES)}
    deployed = json.loads(step.deployed_json)
    package = loop.workdir / "deployments" / run.name
    assert deployed["weights"] == str(package / "model_final.pth") and deployed["round"] == 1
    assert deployed["weights_sha256"] == _sha(package / "model_final.pth")
    assert step.deploy_calls == [f"ARGS --weights {package / 'model_final.pth'} --config {package / 'config.yaml'}",
                                 "TOKEN unset"]  # the token never reaches deploy.sh
    slim = torch.load(package / "model_final.pth", weights_only=True)
    assert set(slim) == {"model", "iteration"}  # no optimizer state in the served file
    assert "_BASE_" not in (package / "config.yaml").read_text()  # deploy.sh needs a flat config
    for name in ("report.md", "report.json", "per_class_ap.png", "state.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "state.json").read_text())["status"] == "finished"


def test_rerun_with_nothing_new_does_nothing(loop):
    step = loop.steps["nothing_new"]
    assert step.code == 0, step.stderr
    assert "nothing new since round 1" in step.stdout
    assert _exports(step) == []
    assert len(step.deploy_calls) == len(loop.steps["first"].deploy_calls)
    assert step.deployed_json == loop.steps["first"].deployed_json


def test_new_data_pulls_only_the_new_job_and_redeploys(loop):
    step = loop.steps["new_data"]
    assert step.code == 0, step.stderr
    assert _exports(step) == [3]
    run = _runs(loop.workdir)[1]
    report = _report(run)
    first = json.loads(loop.steps["first"].deployed_json)
    assert report["training"]["init_weights"] == first["weights"]  # finetuned from the deployed model
    assert report["metrics"]["reference_name"] == "deployed"
    assert report["metrics"]["reference_source"]["round"] == 1
    assert report["dataset"]["new_images"] == 3 and list(report["dataset"]["round_jobs"]) == ["3"]
    assert report["decision"]["deploy"] is True
    deployed = json.loads(step.deployed_json)
    assert deployed["round"] == 2 and deployed["run_id"] == run.name
    assert len(step.deploy_calls) == 4


def test_training_failure_leaves_the_deployed_model_untouched(loop):
    step = loop.steps["training_fails"]
    before = loop.steps["new_data"]
    assert step.code == 4, step.stderr
    assert "missing.pth" in step.stderr and "deployed model is unchanged" in step.stderr
    assert _exports(step) == [1]  # the corrected job only
    assert step.deployed_json == before.deployed_json
    assert step.deploy_calls == before.deploy_calls
    run = _runs(loop.workdir)[2]
    state = step.states[run.name]
    assert state["status"] == "failed" and state["steps"].keys() == {"pulled"} and "missing.pth" in state["error"]
    assert state["report_outcome"] == "training failed: nothing deployed"


def test_resumed_round_with_a_worse_model_is_not_deployed(loop):
    step = loop.steps["worse_resumed"]
    before = loop.steps["new_data"]
    assert step.code == 0, step.stderr
    assert _exports(step) == [] and not step.requests  # resumed after 'pulled': CVAT not even contacted
    assert "not deployed" in step.stdout
    runs = _runs(loop.workdir)
    assert len(runs) == 3  # the failed run was continued, not a new one
    assert step.states[runs[2].name]["status"] == "finished"
    report = _report(runs[2])
    assert report["decision"]["deploy"] is False
    assert any("rail_top" in reason["detail"] and not reason["passed"] for reason in report["decision"]["checks"])
    assert report["dataset"]["changed_images"] == 1
    assert step.deploy_calls == before.deploy_calls
    assert step.deployed_json == before.deployed_json
    deployed = json.loads(step.deployed_json)
    assert _sha(Path(deployed["weights"])) == deployed["weights_sha256"]
    manifest = json.loads((loop.workdir / "dataset" / "manifest.json").read_text())
    assert [r["concluded"] for r in manifest["rounds"]] == [True, True, True]
    assert manifest["rounds"][2]["decision"]["deploy"] is False


def test_dataset_is_versioned_with_a_stable_split(loop):
    dataset = loop.workdir / "dataset"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["val_percent"] == VAL_PERCENT
    images = manifest["images"]
    assert len(images) == 11
    for key, entry in images.items():
        assert _sha(dataset / entry["file"]) == entry["sha256"], key
        assert entry["split"] == split_of(entry["sha256"], VAL_PERCENT)
    assert {e["first_round"] for k, e in images.items() if k.startswith("task_2/")} == {2}
    changed = [k for k, e in images.items() if e["round"] == 3]
    assert changed == ["task_1/000000.jpg"]
    # every round's files stay loadable by the training package; val only grows
    val_sets = []
    for record in manifest["rounds"]:
        records, report = load_cvat_xml(dataset / record["val_xml"], dataset / "images", CLASS_NAMES)
        assert report.images_kept == record["images"]["val"] > 0
        val_sets.append({Path(r.file_name).relative_to(dataset / "images").as_posix() for r in records})
        train, _ = load_cvat_xml(dataset / record["train_xml"], dataset / "images", CLASS_NAMES)
        assert len(train) == record["images"]["train"]
    assert val_sets[0] <= val_sets[1] <= val_sets[2]
    assert len(list((dataset / "sources" / "job_1").glob("*.xml"))) == 2  # both versions of job 1 kept


def test_no_secret_anywhere(loop):
    for step in loop.steps.values():
        assert TOKEN not in step.stdout and TOKEN not in step.stderr
    for path in loop.workdir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
