"""``--dry-run``: what would be pulled, trained and deployed; reads CVAT and the workdir, writes nothing."""

from __future__ import annotations

import shlex

from .dataset_store import DatasetStore
from .deploy import deploy_command, load_deployed
from .gate import describe_criteria
from .options import ExitCode, Outcome, SyncOptions
from .pull import CredentialsReader, close_client, open_client, plan
from .trainer import training_hardware


def dry_run(options: SyncOptions, credentials: CredentialsReader) -> Outcome:
    store = DatasetStore(options.dataset_root)
    val_percent = store.val_percent(options.val_percent)
    deployed = load_deployed(options.workdir)
    client = open_client(options, credentials)
    try:
        work = plan(client, options, store)
    finally:
        close_client(client)
    reasons = {job.id: why for job, why in work.to_pull}
    lines = ["dry run: nothing is downloaded, trained or deployed",
             f"CVAT {options.host}: {options.selection.describe()}: {len(work.jobs)} jobs"]
    for job in work.jobs:
        action = f"pull ({reasons[job.id]})" if job.id in reasons else "up to date"
        lines.append(f"  job {job.id}: task {job.task_id} {job.task_name!r}, frames {job.start_frame}-"
                     f"{job.stop_frame}, {job.stage}/{job.state}, updated {job.updated_date} -> {action}")
    for gone in work.departed:
        lines.append(f"  job {gone.job_id}: task {gone.task_id} {gone.task_name!r}, pulled before, {gone.reason} "
                     f"-> withdraw its {gone.images} images from the next round")
    latest = store.latest_round()
    if work.departed:
        lines.append(f"would withdraw {sum(g.images for g in work.departed)} images of {len(work.departed)} jobs "
                     f"and make round {len(store.rounds) + 1} without them (the manifest keeps them)")
    if work.to_pull or store.has_pending_changes():
        lines.append(f"would pull {len(work.to_pull)} jobs into {store.root} and, if their content changed, make "
                     f"round {len(store.rounds) + 1} (val: {val_percent}% of images, by content hash)")
    elif work.departed:
        pass
    elif latest is not None and not latest["concluded"]:
        lines.append(f"would train round {latest['round']} (pulled earlier, not trained yet)")
    else:
        lines.append("nothing new: would do nothing")
        return Outcome(ExitCode.OK, "\n".join(lines))
    if options.pull_only:
        lines.append("--pull-only: would stop after pulling")
        return Outcome(ExitCode.OK, "\n".join(lines))
    init = {"deployed": f"the deployed weights ({deployed.weights})" if deployed else "the config's MODEL.WEIGHTS",
            "config": "the config's MODEL.WEIGHTS", "none": "random initialisation"}.get(
        options.init_weights, options.init_weights)
    iterations = options.iterations or "the config's SOLVER.MAX_ITER"
    if options.config_file is None:
        lines.append("would stop before training: --config-file is required to train")
        return Outcome(ExitCode.OK, "\n".join(lines))
    lines.append(f"would finetune {options.config_file} from {init} for {iterations} iterations "
                 f"{training_hardware(options.config_file, options.opts, options.num_gpus)}"
                 + (f" with {' '.join(options.opts)}" if options.opts else ""))
    if deployed is not None:
        reference, name = f"the deployed model (run {deployed.run_id}, round {deployed.round})", "deployed"
    elif options.baseline_weights:
        reference, name = f"--baseline-weights {options.baseline_weights}", "baseline"
    else:
        reference, name = "no model (none deployed yet)", None
    lines.append(f"would evaluate the candidate and {reference} on the round's val set; deploy if "
                 f"{describe_criteria(options.criteria, name)}")
    package = options.workdir / "deployments" / "<run id>"
    command = deploy_command(options.deploy_script, package / "model_final.pth", package / "config.yaml",
                             gpu=options.gpu)
    lines.append(("would print (--no-deploy): " if options.no_deploy else "would run: ") + shlex.join(command))
    return Outcome(ExitCode.OK, "\n".join(lines))
