"""barrier-sync-train end to end against a fake CVAT on loopback, with real (tiny) training.

One module fixture plays the rounds of the labelling loop in order and records each; every test
checks one round. The fake CVAT lists shapes in another order in every export, as a real one does.
The rounds:

0. ``--dry-run`` before anything exists
1. first round: 2 finished jobs pulled, tiny model trained, no deployed model -> deployed
2. rerun, nothing changed in CVAT -> nothing done
2b. job 1 edited and edited back: pulled again, its re-export lists the shapes in another order
    -> nothing new, no round
3. a third job is finished -> only it is pulled; candidate vs deployed on the same val -> redeployed
4. an annotator corrects job 1 -> pulled; training fails (bad init weights) -> deployed model untouched
5. ``--resume`` of that run with a candidate that fails the quality gate -> not deployed
6. job 3 is reopened -> its images are withdrawn, a round trains without them; the candidate (an
   untrained model, mask AP 0) is held back whatever --margin and --min-ap say
7. job 3 is completed again -> its images return (--pull-only)

The site is :mod:`tests.sync_sites`' easy one: a tiny model reaches a real mask AP in 5 iterations.
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

from barrier_annotator.sync.dataset_store import split_of
from barrier_annotator.tools.sync_and_train import main
from barrier_annotator.training.data.cvat_xml import load_cvat_xml
from barrier_annotator.training.data.synthetic import CLASS_NAMES
from tests.conftest import TINY_CONFIG
from tests.cvat_fake_server import EPOCH, FakeCvat, synthetic_job_export
from tests.sync_sites import easy_site

TOKEN = "pat-9f3Kq7ZsyncSECRETtoken"
VAL_PERCENT = 30
TINY_OPTS = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.004",
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
    manifest: dict | None = None  # the dataset manifest after this call


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
    site_a = easy_site(root / "site_a", 8, seed=11)
    site_b = easy_site(root / "site_b", 3, seed=12)
    a_names, b_names = site_a.names, site_b.names
    # The split is a pure function of the image bytes: the scenario needs val images in round 1.
    a_splits = [split_of(_sha(site_a.images / n), VAL_PERCENT) for n in a_names]
    assert "val" in a_splits and "train" in a_splits, a_splits

    def export(site, names, **kw):
        return synthetic_job_export(site.annotations, site.images, names, **kw)

    deploy_log = root / "deploy_calls.log"
    script = root / "fake_deploy.sh"
    script.write_text(FAKE_DEPLOY.format(log=deploy_log))
    script.chmod(0o755)
    workdir = root / "work"
    base = ["--project", "1", "--workdir", str(workdir), "--config-file", str(TINY_CONFIG),
            "--deploy-script", str(script), "--val-percent", str(VAL_PERCENT), "--iterations", "5",
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
            manifest = workdir / "dataset" / "manifest.json"
            steps[name] = Step(code, out.getvalue(), err.getvalue(), cvat.log[before:],
                               deploy_log.read_text().splitlines() if deploy_log.exists() else [],
                               deployed.read_bytes() if deployed.exists() else None, states, workdir.exists(),
                               json.loads(manifest.read_text()) if manifest.exists() else None)

        play("dry_run", "--dry-run")
        play("first")
        play("nothing_new")
        cvat.jobs[1].updated = EPOCH + timedelta(hours=1)  # edited and edited back: same shapes, new order
        play("edited_back")
        job3.stage, job3.state, job3.updated = "acceptance", "completed", EPOCH + timedelta(days=1)
        play("new_data", "--margin", "-100")  # the redeploy path runs whatever the two scores are
        job1 = cvat.jobs[1]
        job1.export, job1.updated = export(site_a, a_names[:4], drop_shapes=1), EPOCH + timedelta(days=2)
        play("training_fails", "--init-weights", str(root / "missing.pth"))
        play("worse_resumed", "--resume", "--init-weights", "none", "--iterations", "1",
             "--class-floor", "rail_top=50")
        cvat.update_job(3, state="in progress")  # reopened by a reviewer
        untrained = [*TINY_OPTS, "SOLVER.BASE_LR", "0.0"]  # random weights: mask AP 0
        play("reopened", "--init-weights", "none", "--iterations", "1", "--margin", "-100", "--min-ap", "0",
             opts=untrained)
        cvat.update_job(3, state="completed")
        play("returned", "--pull-only")
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
    assert "iterations on the CPU" in step.stdout and "GPU" not in step.stdout  # MODEL.DEVICE cpu
    assert "segm/AP > 0 and segm/AP >= 10.00" in step.stdout  # the first deployment's floor
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
    runs = _runs(loop.workdir)[:len(step.states)]  # the runs that existed after this step
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
    assert [r["concluded"] for r in manifest["rounds"][:3]] == [True, True, True]
    assert manifest["rounds"][2]["decision"]["deploy"] is False


def test_an_edit_undone_in_cvat_makes_no_round(loop):
    """CVAT's re-export after an edit and its undo lists the same shapes in another order."""
    step = loop.steps["edited_back"]
    assert step.code == 0, step.stderr
    assert _exports(step) == [1]  # updated_date moved: pulled again
    assert "nothing new since round 1" in step.stdout
    assert step.deploy_calls == loop.steps["first"].deploy_calls
    assert len(step.manifest["rounds"]) == 1 and step.manifest["pending"] == {}
    assert len(step.states) == 1  # no run started


def test_a_reopened_job_is_withdrawn_and_a_useless_model_held_back(loop):
    step = loop.steps["reopened"]
    before = loop.steps["worse_resumed"]
    assert step.code == 0, step.stderr
    assert _exports(step) == []  # nothing to download: the withdrawal is a change by itself
    assert "job 3 (task 2 'site B') reopened (now stage acceptance, state in progress)" in step.stderr
    report = _report(_runs(loop.workdir)[-1])
    data = report["dataset"]
    assert data["round"] == 4 and data["withdrawn_images"] == 3 and data["new_images"] == 0
    assert data["withdrawn_jobs"]["3"]["reason"] == "reopened (now stage acceptance, state in progress)"
    assert data["images"]["train"] + data["images"]["val"] == 8  # site A only
    # --margin -100 --min-ap 0 would let anything through; a model with mask AP 0 never is
    assert report["metrics"]["candidate"]["segm/AP"] == 0.0
    assert report["decision"]["deploy"] is False and report["outcome"] == "not deployed"
    assert any("a model with AP 0 is never deployed" in reason for reason in report["held_back"])
    assert "not deployed (segm/AP 0.00: the model finds nothing right" in step.stdout
    markdown = (_runs(loop.workdir)[-1] / "report.md").read_text()
    assert "Held back because" in markdown and "job 3 (task 2 'site B') left the selection: reopened" in markdown
    assert step.deploy_calls == before.deploy_calls and step.deployed_json == before.deployed_json
    withdrawn = {k: e["withdrawn"] for k, e in step.manifest["images"].items() if e.get("withdrawn")}
    assert sorted(withdrawn) == [f"task_2/{n}" for n in ("000000.png", "000001.png", "000002.png")]
    assert {w["round"] for w in withdrawn.values()} == {4}
    assert step.manifest["jobs"]["3"]["withdrawn"]["round"] == 4


def test_a_job_completed_again_returns(loop):
    step = loop.steps["returned"]
    assert step.code == 0, step.stderr
    assert _exports(step) == [3]
    manifest = json.loads((loop.workdir / "dataset" / "manifest.json").read_text())
    record = manifest["rounds"][4]
    assert record["round"] == 5 and record["returned_images"] == 3 and record["returned_jobs"]["3"]["images"] == 3
    assert record["changed_images"] == 0 and record["new_images"] == 0
    assert record["images"] == manifest["rounds"][2]["images"]  # the same 11 images as before the withdrawal
    for key in (f"task_2/{n}" for n in ("000000.png", "000001.png", "000002.png")):
        entry = manifest["images"][key]
        assert "withdrawn" not in entry and entry["round"] == 5 and entry["first_round"] == 2
    assert manifest["jobs"]["3"].get("withdrawn") is None
    assert manifest["rounds"][3]["withdrawn_jobs"]["3"]["images"] == 3  # history keeps the withdrawal


def test_every_json_written_is_strict(loop):
    """No bare NaN/Infinity (COCO gives NaN for absent classes and sizes): strict parsers must read them."""

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in JSON")

    files = [p for p in loop.workdir.rglob("*.json") if p.is_file()]
    assert {p.name for p in files} >= {"deployed.json", "state.json", "report.json", "manifest.json", "metrics.json"}
    for path in files:
        text = path.read_text()
        lines = text.splitlines() if path.name == "metrics.json" else [text]
        for line in filter(str.strip, lines):
            json.loads(line, parse_constant=refuse)
    deployed = json.loads(loop.steps["reopened"].deployed_json)
    assert deployed["metrics"]["segm/APl"] is None  # no large object in the val set: written as null


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
    assert changed == ["task_1/000000.png"]
    # every round's files stay loadable by the training package; val only grows
    val_sets = []
    for record in manifest["rounds"]:
        records, report = load_cvat_xml(dataset / record["val_xml"], dataset / "images", CLASS_NAMES)
        assert report.images_kept == record["images"]["val"] > 0
        val_sets.append({Path(r.file_name).relative_to(dataset / "images").as_posix() for r in records})
        train, _ = load_cvat_xml(dataset / record["train_xml"], dataset / "images", CLASS_NAMES)
        assert len(train) == record["images"]["train"]
    assert val_sets[0] <= val_sets[1] <= val_sets[2]
    assert not {k for k in val_sets[3] if k.startswith("task_2/")}  # withdrawn in round 4, back in round 5
    assert val_sets[0] <= val_sets[3] and val_sets[4] == val_sets[2]
    assert len(list((dataset / "sources" / "job_1").glob("*.xml"))) == 2  # both versions of job 1 kept


def test_no_secret_anywhere(loop):
    for step in loop.steps.values():
        assert TOKEN not in step.stdout and TOKEN not in step.stderr
    for path in loop.workdir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
