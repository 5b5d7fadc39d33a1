"""The sync-and-train building blocks on their own: gate, split, retries, redaction, credentials,
export checks, packaging, run state."""

from __future__ import annotations

import json
import logging
import math
import zipfile

import pytest
import torch
from cvat_sdk.api_client.exceptions import ServiceException, UnauthorizedException

from barrier_annotator.sync.cvat_client import CvatAuthError, read_credentials
from barrier_annotator.sync.dataset_store import DatasetError, DatasetStore, split_of
from barrier_annotator.sync.deploy import (
    DeployError,
    Deployment,
    load_deployed,
    package,
    record_deployment,
)
from barrier_annotator.sync.export import CorruptDownload, ExportError, check_export, safe_member
from barrier_annotator.sync.gate import GateCriteria, decide, describe_criteria
from barrier_annotator.sync.redact import forget_secrets, redact, register_secret, scrubbed_logging
from barrier_annotator.sync.retry import RetriesExhausted, RetryPolicy, TransientError, is_transient, with_retries
from barrier_annotator.sync.run_state import latest_unfinished, new_run
from mask2former.utils import file_sha256

CLASSES = ("rail_top", "rail_mid", "toeboard", "vertical_post")


def metrics(ap: float, **per_class: float) -> dict[str, float]:
    return {"segm/AP": ap, **{f"segm/AP-{c}": per_class.get(c, ap) for c in CLASSES}}


# ---------------------------------------------------------------- gate
def test_gate_needs_the_margin_over_the_deployed_model():
    criteria = GateCriteria(margin=1.0)
    assert decide(metrics(31.0), metrics(30.0), criteria).deploy
    kept = decide(metrics(30.5), metrics(30.0), criteria)
    assert not kept.deploy and "does not beat it by the margin +1.00" in kept.summary
    assert decide(metrics(29.0), metrics(30.0), GateCriteria(margin=-2.0)).deploy  # a tolerated loss


def test_gate_first_round_floors_and_class_drops():
    first = decide(metrics(5.0), None, GateCriteria(min_metric=10.0))
    assert not first.deploy and first.reference == "none" and "below" not in first.summary
    assert "5.00 < minimum 10.00" in first.summary
    floors = GateCriteria(margin=0.0, class_floors={"vertical_post": 20.0})
    blocked = decide(metrics(40.0, vertical_post=15.0), metrics(30.0), floors)
    assert not blocked.deploy and blocked.reasons == ["vertical_post AP 15.00 below floor 20.00"]
    missing = decide({**metrics(40.0), "segm/AP-vertical_post": math.nan}, metrics(30.0), floors)
    assert not missing.deploy and "no val instances" in missing.reasons[0]
    drops = GateCriteria(margin=0.0, max_class_drop=5.0)
    assert not decide(metrics(40.0, toeboard=10.0), metrics(30.0), drops).deploy
    assert decide(metrics(40.0, toeboard=26.0), metrics(30.0), drops).deploy
    assert "segm/AP-vertical_post >= 20.00" not in describe_criteria(floors, "deployed")
    assert "AP-vertical_post >= 20.00" in describe_criteria(floors, "deployed")


def test_gate_refuses_a_candidate_without_the_metric():
    decision = decide({"segm/AP": math.nan}, metrics(30.0), GateCriteria())
    assert not decision.deploy and "no segm/AP" in decision.summary
    assert decide(metrics(50.0, rail_top=1.0), metrics(40.0), GateCriteria(metric="AP-rail_top", margin=0)).deploy \
        is False


# ---------------------------------------------------------------- split and dataset
def test_split_is_a_function_of_the_hash():
    digests = [f"{i:064x}" for i in range(200)]
    assert [split_of(d, 20) for d in digests] == [split_of(d, 20) for d in digests]
    assert sum(split_of(d, 20) == "val" for d in digests) == 40
    assert {split_of(d, 0) for d in digests} == {"train"}


def test_the_val_percentage_is_fixed_once_chosen(tmp_path):
    store = DatasetStore(tmp_path)
    assert store.val_percent(None) == 20
    store.manifest["val_percent"] = 25
    store.save()
    assert DatasetStore(tmp_path).val_percent(None) == 25
    with pytest.raises(DatasetError, match="would move images between train and val"):
        DatasetStore(tmp_path).val_percent(30)


# ---------------------------------------------------------------- retries
def test_retries_back_off_and_give_up_with_the_cause():
    waits: list[float] = []
    calls = iter([ServiceException(status=503, reason="Service Unavailable"), ConnectionResetError("reset"), 42])

    def flaky() -> int:
        outcome = next(calls)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert with_retries(flaky, "GET x", RetryPolicy(attempts=3, backoff=1.5), sleep=waits.append) == 42
    assert waits == [1.5, 3.0]
    assert list(RetryPolicy(attempts=6, backoff=20, max_delay=60).delays()) == [20, 40, 60, 60, 60]

    def always() -> None:
        raise TransientError("short zip")

    with pytest.raises(RetriesExhausted, match="GET y failed 2 times; last error: short zip"):
        with_retries(always, "GET y", RetryPolicy(attempts=2, backoff=0), sleep=waits.append)


def test_client_errors_are_not_retried():
    assert not is_transient(UnauthorizedException(status=401, reason="Unauthorized"))
    assert is_transient(ServiceException(status=500, reason="boom"))
    calls = []

    def refused() -> None:
        calls.append(1)
        raise UnauthorizedException(status=401, reason="Unauthorized")

    with pytest.raises(UnauthorizedException):
        with_retries(refused, "GET z", RetryPolicy(attempts=5, backoff=0), sleep=lambda s: None)
    assert calls == [1]


# ---------------------------------------------------------------- secrets
def test_log_records_are_scrubbed_even_in_tracebacks(caplog):
    secret = "tok-unit-SECRET-42"
    register_secret(secret)
    try:
        with scrubbed_logging(), caplog.at_level(logging.DEBUG):
            log = logging.getLogger("barrier_annotator.sync.test")
            log.info("header Authorization: Bearer %s", secret)
            try:
                raise RuntimeError(f"server echoed {secret}")
            except RuntimeError:
                log.exception("failed")
        text = caplog.text + "".join(record.exc_text or "" for record in caplog.records)
        assert secret not in text and "Bearer ***" in text and "server echoed ***" in text
        assert redact(f"x{secret}y") == "x***y"
    finally:
        forget_secrets()
    assert redact(secret) == secret


def test_credentials_come_from_the_environment_or_a_terminal_prompt():
    token = read_credentials(None, env={"CVAT_ACCESS_TOKEN": "tok-123456"})
    assert token.user is None and "tok-123456" not in repr(token)
    with pytest.raises(CvatAuthError, match="set CVAT_ACCESS_TOKEN"):
        read_credentials(None, env={})
    prompted = read_credentials("bob", env={}, prompt=lambda text: "typed-pw", interactive=True)
    assert prompted.user == "bob" and prompted.secret == "typed-pw" and "typed-pw" not in repr(prompted)
    with pytest.raises(CvatAuthError, match="set CVAT_PASSWORD"):
        read_credentials("bob", env={}, prompt=lambda text: pytest.fail("prompted"), interactive=False)
    forget_secrets()


# ---------------------------------------------------------------- exports
@pytest.mark.parametrize(("name", "ok"), [("images/a.jpg", True), ("images/sub/b.png", True),
                                          ("../a.jpg", False), ("images/../../a", False), ("/etc/passwd", False),
                                          ("C:/x.jpg", False), ("images\\..\\a", False), ("images/./a.jpg", False)])
def test_safe_member_names(name, ok):
    assert safe_member(name) is ok


def test_check_export_tells_damage_from_bad_content(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("annotations.xml", '<annotations><version>1.1</version><image id="0" name="a.jpg" '
                                            'width="4" height="4"/></annotations>')
        archive.writestr("images/a.jpg", b"jpeg")
    assert [i.name for i in check_export(good).document.images] == ["a.jpg"]
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(CorruptDownload):
        check_export(cut)
    missing = tmp_path / "missing.zip"
    with zipfile.ZipFile(missing, "w") as archive:
        archive.writestr("annotations.xml", '<annotations><image id="0" name="b.jpg" width="4" height="4"/>'
                                            '</annotations>')
    with pytest.raises(ExportError, match=r"no file for image 'b\.jpg'"):
        check_export(missing)
    bomb = tmp_path / "entities.zip"
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("annotations.xml", '<!DOCTYPE a [<!ENTITY x "y">]><annotations>&x;</annotations>')
    with pytest.raises(ExportError, match="unsafe XML"):
        check_export(bomb)


# ---------------------------------------------------------------- deployment and run state
def test_package_keeps_only_the_model_and_deployed_json_detects_tampering(tmp_path):
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": torch.zeros(1000)}, "iteration": 9}, checkpoint)
    config = tmp_path / "config.yaml"
    config.write_text("MODEL:\n  DEVICE: cpu\n")
    weights, copied = package(checkpoint, config, tmp_path / "deployments" / "run1")
    assert set(torch.load(weights, weights_only=True)) == {"model", "iteration"}
    assert copied.read_text() == config.read_text() and not list((tmp_path / "deployments").glob(".*"))
    assert load_deployed(tmp_path) is None
    record_deployment(tmp_path, Deployment("run1", 1, str(weights), file_sha256(weights), str(copied)))
    assert load_deployed(tmp_path).run_id == "run1"
    weights.write_bytes(b"swapped")
    with pytest.raises(DeployError, match="changed since it was deployed"):
        load_deployed(tmp_path)


def test_latest_unfinished_run(tmp_path):
    assert latest_unfinished(tmp_path) is None
    first = new_run(tmp_path, 1)
    first.finish("finished")
    second = new_run(tmp_path, 2)
    second.record("pulled", round=2)
    assert latest_unfinished(tmp_path).id == second.id
    second.finish("failed", "boom")
    assert latest_unfinished(tmp_path).data["error"] == "boom"
    second.finish("abandoned")
    assert latest_unfinished(tmp_path) is None
    assert json.loads((second.dir / "state.json").read_text())["steps"]["pulled"] == {"round": 2}


def test_mark_deployed_records_a_package_deployed_by_hand(tmp_path, capsys):
    from barrier_annotator.sync.run_state import RunState
    from barrier_annotator.tools.sync_and_train import main

    run = new_run(tmp_path, 4)
    weights = tmp_path / "deployments" / run.id / "model_final.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    (weights.parent / "config.yaml").write_text("MODEL: {}\n")
    run.record("evaluated", candidate={"segm/AP": 12.5}, reference=None, reference_name="none")
    run.record("deployed", executed=False, reason="--no-deploy", weights=str(weights),
               config=str(weights.parent / "config.yaml"), command=["deploy.sh", "--weights", str(weights)])
    run.finish("finished")
    assert main(["--workdir", str(tmp_path), "--mark-deployed", run.id]) == 0
    deployed = load_deployed(tmp_path)
    assert (deployed.run_id, deployed.round, deployed.metrics) == (run.id, 4, {"segm/AP": 12.5})
    assert RunState.load(run.dir).step("deployed")["executed"] is True
    assert main(["--workdir", str(tmp_path), "--mark-deployed", "no-such-run"]) == 2
    assert "no run state" in capsys.readouterr().err


def test_a_password_on_the_command_line_is_refused(tmp_path, capsys):
    from barrier_annotator.tools.sync_and_train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--host", "http://127.0.0.1:9", "--project", "1", "--workdir", str(tmp_path), "--auth",
              "alice:hunter2-secret", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "CVAT_PASSWORD" in err and "hunter2-secret" not in err


def test_several_gpus_train_in_worker_processes(tmp_path, monkeypatch):
    """--num-gpus N > 1: barrier-train's launcher on the merged config; metrics from metrics.json."""
    import subprocess

    from barrier_annotator.sync import trainer
    from tests.conftest import TINY_CONFIG

    calls = []

    def fake_run(command, env, check):
        calls.append((command, env))
        output = tmp_path / "out"
        torch.save({"model": {}}, output / "model_final.pth")
        (output / "metrics.json").write_text(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n"
                                             + json.dumps({"iteration": 9, "segm/AP": 7.5}) + "\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(trainer.subprocess, "run", fake_run)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "tok-never-in-workers")
    split = trainer.DatasetSplit("safetybarrier_x_val", tmp_path / "val.xml", tmp_path / "images")
    result = trainer.finetune(trainer.TrainRequest(TINY_CONFIG, split, split, tmp_path / "out", iterations=10,
                                                   num_gpus=2, opts=("MODEL.DEVICE", "cpu")))
    command, env = calls[0]
    assert command[1:] == ["-m", "barrier_annotator.training.train_net", "--config-file",
                           str(tmp_path / "out" / "sync_config.yaml"), "--num-gpus", "2"]
    assert "CVAT_ACCESS_TOKEN" not in env
    dumped = (tmp_path / "out" / "sync_config.yaml").read_text()
    assert "MAX_ITER: 10" in dumped and "safetybarrier_x_val" in dumped
    assert result.metrics == {"segm/AP": 7.5}


# ---------------------------------------------------------------- never a useless model (issue 13)
def test_a_model_with_mask_ap_0_or_nan_is_never_deployed():
    anything = GateCriteria(margin=-100.0, min_metric=0.0)
    zero = decide(metrics(0.0), metrics(0.0), anything)
    assert not zero.deploy and "a model with AP 0 is never deployed" in zero.summary
    assert not decide(metrics(0.0), None, anything).deploy
    # gated on a class metric, the overall mask AP still has to exist
    blind = decide({"segm/AP": math.nan, "segm/AP-rail_top": 50.0}, None,
                   GateCriteria(metric="AP-rail_top", margin=0.0, min_metric=0.0))
    assert not blind.deploy and "the evaluation saw no instance" in blind.summary
    assert decide({**metrics(20.0), "segm/AP": None}, None, anything).deploy is False  # null read back from JSON


def test_a_val_set_without_instances_decides_nothing():
    empty = decide(metrics(40.0), metrics(30.0), GateCriteria(), val_instances=0)
    assert not empty.deploy and "the val set has 0 instances: the evaluation measured nothing" in empty.reasons
    assert decide(metrics(40.0), metrics(30.0), GateCriteria(), val_instances=12).deploy


def test_the_first_deployment_needs_a_floor_by_default():
    from barrier_annotator.sync.gate import FIRST_DEPLOYMENT_MIN_AP

    assert FIRST_DEPLOYMENT_MIN_AP == 10.0
    weak = decide(metrics(5.0), None, GateCriteria())
    assert not weak.deploy and weak.reasons == ["segm/AP 5.00 < minimum 10.00 (first deployment; --min-ap sets it)"]
    assert not decide(metrics(5.0), metrics(1.0), GateCriteria(), reference_name="baseline").deploy
    assert decide(metrics(12.0), None, GateCriteria()).deploy
    assert decide(metrics(5.0), metrics(4.0), GateCriteria()).deploy  # after it, the deployed model is the bar
    assert not decide(metrics(5.0), metrics(4.0), GateCriteria(min_metric=6.0)).deploy  # an explicit floor stays
    assert decide(metrics(5.0), None, GateCriteria(min_metric=2.0)).deploy
    assert "segm/AP >= 10.00" in describe_criteria(GateCriteria(), None)
    assert "segm/AP >= 10.00" not in describe_criteria(GateCriteria(), "deployed")


def test_the_command_line_floor_defaults_to_the_first_deployment_rule(tmp_path):
    from barrier_annotator.tools.sync_and_train import build_parser, options_from_args

    base = ["--host", "http://cvat", "--project", "1", "--workdir", str(tmp_path)]
    assert options_from_args(build_parser().parse_args(base)).criteria.min_metric is None
    assert options_from_args(build_parser().parse_args([*base, "--min-ap", "3"])).criteria.min_metric == 3.0


# ---------------------------------------------------------------- strict JSON everywhere (issue 13)
def _strict(text: str):
    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_null_for_nan_and_infinity(tmp_path):
    from mask2former.utils import atomic_write_json, dumps_json

    path = tmp_path / "x.json"
    atomic_write_json(path, {"ap": math.nan, "nested": [math.inf, (1.5, -math.inf)], "ok": 2.0})
    assert _strict(path.read_text()) == {"ap": None, "nested": [None, [1.5, None]], "ok": 2.0}
    assert dumps_json({"a": math.nan}) == '{"a": null}'
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert _strict(path.read_text())["ok"] == 2.0  # a failed write leaves the previous file


def test_deployed_and_state_files_are_strict_and_older_ones_still_load(tmp_path):
    from barrier_annotator.sync.run_state import RunState

    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"w")
    record_deployment(tmp_path, Deployment("r1", 1, str(weights), file_sha256(weights), str(weights),
                                           metrics={"segm/AP": 12.0, "segm/APl": math.nan}))
    assert _strict((tmp_path / "deployed.json").read_text())["metrics"] == {"segm/AP": 12.0, "segm/APl": None}
    assert load_deployed(tmp_path).metrics["segm/APl"] is None
    older = json.loads((tmp_path / "deployed.json").read_text())
    (tmp_path / "deployed.json").write_text(json.dumps(older).replace("null", "NaN"))  # what 0.x wrote
    assert math.isnan(load_deployed(tmp_path).metrics["segm/APl"])
    run = new_run(tmp_path, 1)
    run.record("trained", metrics={"segm/AP": 3.0, "segm/APs": math.nan, "loss": math.inf})
    assert _strict((run.dir / "state.json").read_text())["steps"]["trained"]["metrics"]["segm/APs"] is None
    (run.dir / "state.json").write_text((run.dir / "state.json").read_text().replace("null", "NaN"))
    assert math.isnan(RunState.load(run.dir).step("trained")["metrics"]["segm/APs"])


def test_metrics_json_lines_are_strict(tmp_path):
    from barrier_annotator.training.evaluation import write_metrics
    from barrier_annotator.training.metrics import read_metrics, truncate_metrics

    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 0, "total_loss": NaN}\n')  # an older file
    write_metrics(path, {"AP": 1.0, "APl": math.nan, "APm": math.inf}, iteration=4)
    assert read_metrics(path)[1] == {"iteration": 4, "segm/AP": 1.0, "segm/APl": None, "segm/APm": None}
    truncate_metrics(path, 3)  # rewrites the file: the older line's NaN becomes null
    assert [_strict(line) for line in path.read_text().splitlines()] == [{"iteration": 0, "total_loss": None}]


# ---------------------------------------------------------------- the dry run tells the device (issue 13)
def test_the_dry_run_names_the_device_the_config_chooses(monkeypatch):
    from barrier_annotator.sync.trainer import training_hardware
    from tests.conftest import TINY_CONFIG

    assert training_hardware(TINY_CONFIG, (), 1) == "on the CPU"  # tiny_cpu.yaml: MODEL.DEVICE cpu
    assert training_hardware(TINY_CONFIG, (), 2) == "on the CPU in 2 worker processes"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    text = training_hardware(TINY_CONFIG, ("MODEL.DEVICE", "cuda"), 1)
    assert text.startswith("on 1 GPU (MODEL.DEVICE cuda), but 0 CUDA devices are visible here")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert training_hardware(TINY_CONFIG, ("MODEL.DEVICE", "cuda"), 2) == "on 2 GPUs (MODEL.DEVICE cuda)"
    assert "does not load" in training_hardware(TINY_CONFIG, ("NO.SUCH_KEY", "1"), 1)
