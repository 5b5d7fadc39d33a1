"""One sync-and-train run: pull -> (round to train?) -> finetune -> evaluate both -> gate -> deploy -> report.

Every step is recorded in the run's ``state.json`` when it completes; ``--resume`` continues an
interrupted or failed run after its last completed step. Failures map to :class:`ExitCode` values
with one clear message; the deployed model changes only after ``deploy.sh`` succeeded.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from barrier_annotator.training.engine import TrainingInterrupted
from mask2former.config import load_config
from mask2former.config.class_names import class_names_for
from mask2former.utils import file_sha256

from .cvat_client import CvatError, read_credentials
from .dataset_store import DatasetError, DatasetStore
from .deploy import (
    DeployError,
    Deployment,
    deploy_command,
    load_deployed,
    package,
    record_deployment,
    run_deploy,
)
from .gate import decide, metric_key
from .options import ExitCode, Outcome, SyncOptions
from .pull import CredentialsReader, close_client, open_client, pull
from .report import write_report
from .run_state import RunState, WorkdirBusy, latest_unfinished, new_run, workdir_lock
from .trainer import DatasetSplit, TrainingFailed, TrainRequest, evaluate, finetune

logger = logging.getLogger(__name__)


def run_sync(options: SyncOptions, credentials: CredentialsReader | None = None) -> Outcome:
    """The whole loop under the workdir lock; every anticipated failure becomes an Outcome."""
    from .cvat_client import read_credentials

    reader = credentials or read_credentials
    try:
        if options.dry_run:
            from .dry_run import dry_run

            return dry_run(options, reader)
        with workdir_lock(options.workdir):
            return _locked(options, reader)
    except WorkdirBusy as error:
        return Outcome(ExitCode.BUSY, str(error))
    except CvatError as error:
        return Outcome(ExitCode.CVAT, str(error))
    except (DatasetError, DeployError) as error:
        return Outcome(ExitCode.USAGE, str(error))
    except (KeyboardInterrupt, TrainingInterrupted):
        return Outcome(ExitCode.INTERRUPTED, "interrupted: rerun with --resume to continue this run, "
                                             "or without it to start the round clean")


def mark_deployed(workdir: Path, run_id: str) -> Outcome:
    """Record a run's package as live after its printed (--no-deploy) command was run by hand."""
    try:
        with workdir_lock(workdir):
            run = RunState.load(workdir / "runs" / run_id)
            step = run.data["steps"].get("deployed") or {}
            if "weights" not in step:
                return Outcome(ExitCode.USAGE, f"run {run_id} has no deployment package (the gate kept the "
                                               f"deployed model, or the run did not finish)")
            weights = Path(step["weights"])
            record_deployment(workdir, Deployment(
                run_id=run.id, round=run.data["round"], weights=str(weights), weights_sha256=file_sha256(weights),
                config=step["config"], metrics=dict(run.step("evaluated")["candidate"]),
                deployed_at=datetime.now(UTC).isoformat(timespec="seconds"), command=step["command"]))
            run.data["steps"]["deployed"] = {**step, "executed": True, "reason": "deployed by hand (--mark-deployed)"}
            run.save()
            return Outcome(ExitCode.OK, f"recorded {weights} (run {run_id}, round {run.data['round']}) as the "
                                        f"deployed model", run.dir)
    except FileNotFoundError as error:
        return Outcome(ExitCode.USAGE, f"--mark-deployed {run_id}: {error}")
    except WorkdirBusy as error:
        return Outcome(ExitCode.BUSY, str(error))


def _locked(options: SyncOptions, reader: CredentialsReader) -> Outcome:
    store = DatasetStore(options.dataset_root)
    shutil.rmtree(options.staging, ignore_errors=True)  # leftovers of a killed download
    run = latest_unfinished(options.workdir)
    if run is not None:
        latest = store.latest_round()
        last_step = list(run.data["steps"])[-1] if run.data["steps"] else "start"
        if not options.resume:
            logger.warning("run %s stopped (%s) after '%s'; starting clean (--resume would continue it)",
                           run.id, run.status, last_step)
            run.finish("abandoned")
        elif latest is None or latest["round"] != run.data["round"]:
            logger.warning("run %s was for round %s, but the dataset moved on: starting clean", run.id,
                           run.data["round"])
            run.finish("abandoned")
        else:
            logger.info("resuming run %s (round %d) after '%s'", run.id, run.data["round"], last_step)
            return _round(options, store, run)
    elif options.resume:
        logger.info("--resume: no unfinished run; starting a normal run")

    pulled = pull(options, store, reader)
    latest = store.latest_round()
    if latest is None:
        return Outcome(ExitCode.OK, "nothing pulled yet: no finished job in the selection; nothing to do")
    if latest["concluded"]:
        return Outcome(ExitCode.OK, f"nothing new since round {latest['round']} (run {latest['run']}: "
                                    f"{(latest['decision'] or {}).get('summary', 'done')}); nothing to do")
    if options.pull_only:
        return Outcome(ExitCode.OK, f"pulled {len(pulled)} jobs; round {latest['round']} is ready "
                                    f"(--pull-only: not training)")
    if not latest["images"]["train"] or not latest["images"]["val"]:
        return Outcome(ExitCode.OK, f"round {latest['round']} has {latest['images']['train']} train and "
                                    f"{latest['images']['val']} val images: both are needed to train and "
                                    f"compare; waiting for more finished work")
    run = new_run(options.workdir, latest["round"])
    run.record("pulled", round=latest["round"], jobs=pulled)
    return _round(options, store, run)


def _round(options: SyncOptions, store: DatasetStore, run: RunState) -> Outcome:
    record = store.rounds[run.data["round"] - 1]
    train_xml, val_xml, images = store.round_files(record)
    prefix = f"safetybarrier_sync_r{record['round']}"
    train_split = DatasetSplit(f"{prefix}_train", train_xml, images)
    val_split = DatasetSplit(f"{prefix}_val", val_xml, images)
    deployed = load_deployed(options.workdir)
    report: dict[str, Any] = _report_head(options, store, record, run)
    try:
        trained = _train(options, run, deployed, train_split, val_split)
        report["training"] = trained
        evaluated = _evaluate(options, run, deployed, trained, val_split)
        report["metrics"] = {"metric": metric_key(options.criteria.metric), **evaluated}
    except TrainingFailed as error:
        run.finish("failed", str(error))
        report.update(outcome="training failed: nothing deployed", error=str(error))
        _write(run, report)
        return Outcome(ExitCode.TRAINING, f"{error} (the deployed model is unchanged; --resume retries)", run.dir)

    if not run.done("decided"):
        reference = evaluated["reference"]
        decision = decide(evaluated["candidate"], reference, options.criteria,
                          reference_name=evaluated["reference_name"],
                          val_instances=sum(record["instances"]["val"].values()))
        run.record("decided", **decision.to_dict())
    decided = run.step("decided")
    report["decision"] = decided
    try:
        report["deployment"] = _deploy(options, run, record, trained, evaluated, decided)
    except DeployError as error:
        run.finish("failed", str(error))
        report.update(outcome="deployment failed: the deployed model is unchanged", error=str(error))
        _write(run, report)
        return Outcome(ExitCode.DEPLOY, str(error), run.dir)

    deployment = report["deployment"]
    outcome = ("deployed" if deployment.get("executed") else "ready to deploy (--no-deploy)") \
        if decided["deploy"] else "not deployed"
    report["outcome"] = outcome
    held_back = [check["detail"] for check in decided["checks"] if not check["passed"]]
    if held_back:
        report["held_back"] = held_back
    store.conclude_round(record["round"], run.id, {"deploy": decided["deploy"], "summary": decided["summary"],
                                                   "executed": bool(deployment.get("executed"))})
    selection_failed = None
    if options.after_round is not None:
        report["selection"] = _select(options, store, run, record["round"])
        selection_failed = report["selection"].get("error")
    paths = _write(run, report)
    run.record("reported", **{k: str(v) for k, v in paths.items()})
    run.finish("finished")
    key = metric_key(options.criteria.metric)
    new, old = evaluated["candidate"].get(key), (evaluated["reference"] or {}).get(key)
    versus = f" vs {evaluated['reference_name']} {_number(old)}" if evaluated["reference"] is not None else ""
    why = f" ({'; '.join(held_back)})" if held_back else ""
    chosen = _selection_summary(report.get("selection"))
    message = (f"round {record['round']}: candidate {key} {_number(new)}{versus} -> {outcome}{why}.{chosen} "
               f"Report: {paths['markdown']}")
    return Outcome(ExitCode.CVAT if selection_failed else ExitCode.OK, message, run.dir)


def _select(options: SyncOptions, store: DatasetStore, run: RunState, round_number: int) -> dict[str, Any]:
    """``--select``: the next frames and their task, once per run (a resumed run keeps its choice).
    A failure is reported, never undoes the round: rerun ``barrier-select --create-task`` or the
    next round to finish a task that was cut off."""
    if run.done("selected"):
        return run.step("selected")
    assert options.after_round is not None
    client = None
    try:
        client = open_client(options, read_credentials)
        labelled = {entry["sha256"] for entry in store.manifest["images"].values()}
        info = options.after_round(client, workdir=options.workdir, selection=options.selection,
                                   round_number=round_number, deployed=load_deployed(options.workdir),
                                   labelled_keys=labelled, retry=options.retry, export=options.export,
                                   progress=options.progress)
    except (CvatError, DeployError, OSError, ValueError) as error:
        logger.error("--select: %s", error)
        return {"error": str(error), "chosen": []}
    finally:
        if client is not None:
            close_client(client)
    run.record("selected", **info)
    return info


def _selection_summary(selection: dict[str, Any] | None) -> str:
    if not selection:
        return ""
    if selection.get("error"):
        return f" Selection failed: {selection['error']}."
    task = selection.get("task") or {}
    if task:
        return f" Chose {len(selection.get('chosen', []))} frames for CVAT task {task.get('id')} {task.get('name')!r}."
    return f" Nothing chosen: {selection.get('reason', 'no candidate')}."


def _number(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _init_weights(options: SyncOptions, deployed: Deployment | None) -> str | None:
    choice = options.init_weights
    if choice == "deployed":
        return deployed.weights if deployed else None
    return {"config": None, "none": ""}.get(choice, choice)


def _train(options: SyncOptions, run: RunState, deployed: Deployment | None, train: DatasetSplit,
           val: DatasetSplit) -> dict[str, Any]:
    if run.done("trained"):
        return run.step("trained")
    if options.config_file is None:
        raise TrainingFailed("--config-file is required to train")
    init = _init_weights(options, deployed)
    request = TrainRequest(config_file=options.config_file, train=train, val=val, output_dir=run.dir / "train",
                           init_weights=init, iterations=options.iterations, num_gpus=options.num_gpus,
                           opts=options.opts, resume=(run.dir / "train").is_dir(), progress=options.progress)
    started = time.monotonic()
    result = finetune(request)
    info = {"config_file": str(options.config_file), "opts": list(options.opts),
            "init_weights": "config MODEL.WEIGHTS" if init is None else (init or "random"),
            "iterations": options.iterations, "num_gpus": options.num_gpus,
            "device": str(load_config(str(result.config)).MODEL.DEVICE), "weights": str(result.weights),
            "config": str(result.config), "seconds": round(time.monotonic() - started, 1),
            "metrics": dict(result.metrics)}
    run.record("trained", **info)
    return info


def _evaluate(options: SyncOptions, run: RunState, deployed: Deployment | None, trained: dict[str, Any],
              val: DatasetSplit) -> dict[str, Any]:
    if run.done("evaluated"):
        return run.step("evaluated")
    device = str(load_config(trained["config"]).MODEL.DEVICE)
    reference, name, source = None, "none", None
    if deployed is not None:
        logger.info("evaluating the deployed model (run %s, round %d) on the same val set", deployed.run_id,
                    deployed.round)
        reference = evaluate(Path(deployed.config), deployed.weights, val, run.dir / "eval_deployed",
                             device=device, progress=options.progress)
        name, source = "deployed", {"run": deployed.run_id, "round": deployed.round, "weights": deployed.weights}
    elif options.baseline_weights:
        logger.info("no deployed model yet: comparing with --baseline-weights %s", options.baseline_weights)
        reference = evaluate(Path(trained["config"]), options.baseline_weights, val, run.dir / "eval_baseline",
                             device=device, progress=options.progress)
        name, source = "baseline", {"weights": options.baseline_weights}
    info = {"candidate": trained["metrics"], "reference": reference, "reference_name": name,
            "reference_source": source}
    run.record("evaluated", **info)
    return info


def _deploy(options: SyncOptions, run: RunState, record: dict[str, Any], trained: dict[str, Any],
            evaluated: dict[str, Any], decided: dict[str, Any]) -> dict[str, Any]:
    if run.done("deployed"):
        return run.step("deployed")
    if not decided["deploy"]:
        info = {"executed": False, "reason": "the gate kept the deployed model"}
        run.record("deployed", **info)
        return info
    weights, config = package(Path(trained["weights"]), Path(trained["config"]),
                              options.workdir / "deployments" / run.id)
    command = deploy_command(options.deploy_script, weights, config, gpu=options.gpu)
    info = {"package": str(weights.parent), "weights": str(weights), "config": str(config), "command": command}
    if options.no_deploy:
        print(f"deploy command (--no-deploy, not run):\n  {shlex.join(command)}", flush=True)
        info["executed"] = False
        info["reason"] = "--no-deploy"
    else:
        run_deploy(command, options.deploy_timeout)
        record_deployment(options.workdir, Deployment(
            run_id=run.id, round=record["round"], weights=str(weights), weights_sha256=file_sha256(weights),
            config=str(config), metrics=dict(evaluated["candidate"]),
            deployed_at=datetime.now(UTC).isoformat(timespec="seconds"), command=command))
        info["executed"] = True
    run.record("deployed", **info)
    return info


def _report_head(options: SyncOptions, store: DatasetStore, record: dict[str, Any], run: RunState) -> dict[str, Any]:
    pulled = run.step("pulled") if run.done("pulled") else {"jobs": []}
    return {
        "run_id": run.id, "started": run.data.get("started"), "outcome": "running",
        "cvat": {"host": options.host, "selection": options.selection.describe()},
        "dataset": {"root": str(store.root), "round": record["round"], "val_percent": store.manifest["val_percent"],
                    "pulled_jobs": pulled["jobs"], "round_jobs": record["jobs"], "tasks": record["tasks"],
                    **{k: record[k] for k in ("new_images", "changed_images", "removed_images", "images",
                                              "instances", "other_shapes", "train_xml", "val_xml")},
                    **{k: record.get(k, default) for k, default in (
                        ("withdrawn_images", 0), ("returned_images", 0), ("withdrawn_jobs", {}),
                        ("returned_jobs", {}), ("duplicate_images", {}))}},
        "gate": {"metric": metric_key(options.criteria.metric), "margin": options.criteria.margin,
                 "min_metric": options.criteria.min_metric, "class_floors": dict(options.criteria.class_floors),
                 "max_class_drop": options.criteria.max_class_drop},
    }


def _write(run: RunState, report: dict[str, Any]) -> dict[str, Path]:
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    names = _class_names(report)
    return write_report(run.dir, report, names)


def _class_names(report: dict[str, Any]) -> list[str]:
    config = (report.get("training") or {}).get("config")
    if config and Path(config).is_file():
        try:
            return list(class_names_for(load_config(config)))
        except Exception:  # the report must not fail on a config problem
            pass
    return sorted(report.get("dataset", {}).get("instances", {}).get("train", {}))


__all__ = ["Outcome", "mark_deployed", "run_sync"]
