"""Close the model-assisted-labelling loop: CVAT corrections -> finetuned model -> quality gate -> redeploy.

    CVAT_ACCESS_TOKEN=... barrier-sync-train --host https://cvat.example.com --project 12 \\
        --workdir /data/barrier-loop --config-file configs/.../maskformer2_swin_tiny_bs16_50ep.yaml \\
        --iterations 2000 --margin 0.5 --gpu

Each run pulls the jobs that are finished in CVAT (stage acceptance, state completed) and changed
since the last run, as "CVAT for images 1.1" exports with original frames, into a versioned dataset
under --workdir (fixed train/val split by image hash). When something changed it finetunes (from
the deployed weights by default), evaluates the new and the deployed model on the same val set,
and deploys the new one with deploy.sh only when it beats the deployed one by --margin (mask AP)
and clears the optional per-class floors; the first deployment needs --min-ap (default 10), and a
model with mask AP 0 or NaN is never deployed. Jobs that left the selection (reopened, moved back a
stage, deleted) are withdrawn from the next round's dataset. A report (Markdown, JSON, plot) is
written per run. Nothing new in CVAT: exit 0, nothing done.

``--select N [--strategy hybrid]``: after every round (deployed or not) the model deployed at its
end scores the frames of the project's jobs that are not completed, chooses N (see
``barrier-select``; a frame is chosen once, ever) and creates a CVAT task of them in the project,
pre-labelled (source "semi-auto"); the report lists what was chosen and why. Before any model is
deployed nothing is chosen. A frame labelled twice (in its task and in the new one) trains once.

Exit status: 0 done (also: nothing new, or the gate kept the deployed model), 2 bad options or
workdir, 3 CVAT unreachable / credentials refused / export failed, 4 training or evaluation failed,
5 deployment failed (the deployed model is unchanged), 6 another run holds the workdir,
130 interrupted (--resume continues); 3 also when the round finished but --select failed (the
report says why).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from barrier_annotator.selection.after_round import RoundSelection, select_after_round
from barrier_annotator.selection.strategies import STRATEGIES
from barrier_annotator.sync.cvat_client import Selection
from barrier_annotator.sync.export import ExportSettings
from barrier_annotator.sync.gate import FIRST_DEPLOYMENT_MIN_AP, GateCriteria
from barrier_annotator.sync.loop import mark_deployed, run_sync
from barrier_annotator.sync.options import AfterRound, ExitCode, SyncOptions
from barrier_annotator.sync.redact import forget_secrets, redact, scrubbed_logging
from barrier_annotator.sync.retry import RetryPolicy
from mask2former.command_line import LOG_FORMAT

logger = logging.getLogger("barrier-sync-train")


def _class_floor(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS=AP, e.g. vertical_post=20, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barrier-sync-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cvat = parser.add_argument_group("CVAT (token: CVAT_ACCESS_TOKEN; password: CVAT_PASSWORD or a prompt)")
    cvat.add_argument("--host", help="CVAT server URL, e.g. https://cvat.example.com[:port] (required)")
    cvat.add_argument("--auth", metavar="USER", default=None,
                      help="log in as USER with a password instead of the CVAT_ACCESS_TOKEN token")
    cvat.add_argument("--org", "--organization", dest="organization", metavar="SLUG", default=None,
                      help="organization context (its projects and tasks); '' for the personal workspace")
    cvat.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    select = parser.add_argument_group("what to pull")
    select.add_argument("--project", type=int, action="append", default=[], metavar="ID",
                        help="project id (repeatable)")
    select.add_argument("--task", type=int, action="append", default=[], metavar="ID", help="task id (repeatable)")
    select.add_argument("--stage", default="acceptance", help="job stage to pull (default acceptance; 'any')")
    select.add_argument("--state", default="completed", help="job state to pull (default completed; 'any')")
    select.add_argument("--val-percent", type=int, default=None, metavar="P",
                        help="share of images (by content hash) kept for validation; fixed at the first run "
                             "(default 20)")
    data = parser.add_argument_group("local state")
    data.add_argument("--workdir", required=True, type=Path,
                      help="dataset, runs, deployments and deployed.json live here; keep it between runs")
    train = parser.add_argument_group("training")
    train.add_argument("--config-file", type=Path, default=None, help="model config to finetune (required to train)")
    train.add_argument("--init-weights", default="deployed", metavar="WEIGHTS",
                       help="start from: 'deployed' (default; the config's MODEL.WEIGHTS before the first "
                            "deployment), 'config', 'none' (random) or a checkpoint path/URL")
    train.add_argument("--iterations", type=int, default=None, help="SOLVER.MAX_ITER of the finetune (default: config)")
    train.add_argument("--num-gpus", type=int, default=1, help="GPUs on this machine (>1: torch.distributed workers)")
    train.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                       help="config overrides, last on the command line: e.g. --opts MODEL.DEVICE cpu "
                            "SOLVER.IMS_PER_BATCH 4")
    gate = parser.add_argument_group("quality gate")
    gate.add_argument("--metric", default="AP", help="metric to compare (default AP = segm/AP, COCO mask AP 0..100)")
    gate.add_argument("--margin", type=float, default=0.5,
                      help="deploy only when the candidate beats the deployed model by this much (default 0.5)")
    gate.add_argument("--min-ap", type=float, default=None, metavar="AP",
                      help=f"the candidate's minimum metric (default: {FIRST_DEPLOYMENT_MIN_AP:g} while no model is "
                           f"deployed, none after the first deployment, where the deployed model is the bar). A "
                           f"model with mask AP 0 or NaN, or evaluated on a val set without instances, is never "
                           f"deployed")
    gate.add_argument("--class-floor", type=_class_floor, action="append", default=[], metavar="CLASS=AP",
                      help="minimum per-class metric of the candidate (repeatable)")
    gate.add_argument("--max-class-drop", type=float, default=None, metavar="AP",
                      help="refuse a candidate that loses more than this on any class")
    gate.add_argument("--baseline-weights", default=None,
                      help="before the first deployment, compare with these weights instead of nothing")
    deploy = parser.add_argument_group("deployment")
    deploy.add_argument("--deploy-script", type=Path, default=None,
                        help="deploy.sh to run (default: the one of the checkout this product was installed from)")
    deploy.add_argument("--gpu", action="store_true", help="deploy the GPU function (deploy.sh --gpu)")
    deploy.add_argument("--no-deploy", action="store_true", help="package the model and print the command only")
    deploy.add_argument("--deploy-timeout", type=float, default=None, metavar="S", help="limit for deploy.sh")
    choose = parser.add_argument_group("what to label next")
    choose.add_argument("--select", type=int, default=0, metavar="N",
                        help="after a round, choose N frames of the jobs that are not completed with the deployed "
                             "model and create a pre-labelled CVAT task of them in the project (see barrier-select)")
    choose.add_argument("--strategy", dest="select_strategy", default="hybrid",
                        choices=STRATEGIES, help="--select's strategy")
    choose.add_argument("--select-task-name", default="barrier-select round {round}", metavar="NAME",
                        help="name of the task --select creates ({round}: the round's number)")
    choose.add_argument("--select-backend", default=None, choices=("auto", "torch", "openvino"),
                        help="backend scoring runs on (default: the deployed config's)")
    control = parser.add_argument_group("run control")
    control.add_argument("--dry-run", action="store_true", help="show what would be pulled and trained; change nothing")
    control.add_argument("--pull-only", action="store_true", help="update the dataset, do not train")
    control.add_argument("--mark-deployed", metavar="RUN_ID", default=None,
                         help="after running a --no-deploy command by hand: record that run's package as the "
                              "deployed model (only --workdir is needed)")
    control.add_argument("--resume", action="store_true",
                         help="continue the last interrupted or failed run (default: start it clean)")
    control.add_argument("--retries", type=int, default=5, help="attempts per CVAT request (default 5)")
    control.add_argument("--retry-backoff", type=float, default=2.0, metavar="S",
                         help="first wait between attempts, doubled each time (default 2 s, at most 60 s)")
    control.add_argument("--poll-period", type=float, default=2.0, metavar="S", help="export status polling")
    control.add_argument("--export-timeout", type=float, default=3600.0, metavar="S",
                         help="how long CVAT may take to prepare one export (default 3600 s)")
    control.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    control.add_argument("-v", "--verbose", action="store_true", help="debug logging (secrets are masked)")
    return parser


def options_from_args(args: argparse.Namespace) -> SyncOptions:
    def any_or(value: str) -> str | None:
        return None if value.lower() in ("any", "") else value

    return SyncOptions(
        host=args.host, workdir=args.workdir.absolute(),
        selection=Selection(tuple(args.project), tuple(args.task), any_or(args.stage), any_or(args.state)),
        config_file=args.config_file, auth_user=args.auth, organization=args.organization, insecure=args.insecure,
        val_percent=args.val_percent, init_weights=args.init_weights, iterations=args.iterations,
        num_gpus=args.num_gpus, opts=tuple(args.opts),
        criteria=GateCriteria(metric=args.metric, margin=args.margin, min_metric=args.min_ap,
                              class_floors=dict(args.class_floor), max_class_drop=args.max_class_drop),
        baseline_weights=args.baseline_weights, deploy_script=args.deploy_script and args.deploy_script.absolute(),
        gpu=args.gpu,
        no_deploy=args.no_deploy, deploy_timeout=args.deploy_timeout, dry_run=args.dry_run,
        pull_only=args.pull_only, resume=args.resume,
        retry=RetryPolicy(attempts=args.retries, backoff=args.retry_backoff),
        export=ExportSettings(poll_period=args.poll_period, timeout=args.export_timeout, progress=args.progress),
        progress=args.progress, after_round=after_round_step(args))


def after_round_step(args: argparse.Namespace) -> AfterRound | None:
    """``--select``: the selection package's after-round step, bound to what was asked (else None)."""
    if not args.select:
        return None
    request = RoundSelection(args.select, args.select_strategy, args.select_task_name, args.select_backend)
    return functools.partial(select_after_round, request=request)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.mark_deployed:
        return
    if not args.host:
        parser.error("--host is required")
    if args.auth and ":" in args.auth:  # cvat-cli accepts USER:PASS; a password in argv is readable by others
        parser.error("--auth takes a user name only: put the password in CVAT_PASSWORD or type it at the prompt")
    if not args.project and not args.task:
        parser.error("give --project ID and/or --task ID")
    if not args.dry_run and not args.pull_only and args.config_file is None:
        parser.error("--config-file is required to train (or use --pull-only / --dry-run)")
    if args.config_file is not None and not args.config_file.is_file():
        parser.error(f"--config-file {args.config_file}: no such file")
    if args.retries < 1 or args.num_gpus < 1 or (args.iterations is not None and args.iterations < 1):
        parser.error("--retries, --num-gpus and --iterations must be at least 1")
    if args.val_percent is not None and not 0 < args.val_percent < 100:
        parser.error("--val-percent must be within 1..99")
    if args.select < 0:
        parser.error("--select must be at least 1 (or 0: choose nothing)")
    if args.select and len(args.project) + len(args.task) == 0:
        parser.error("--select needs --project: the task it creates goes into that project")
    if args.opts and len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {len(args.opts)} words")


def _logging(workdir: Path, verbose: bool, to_file: bool) -> list[logging.Handler]:
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if to_file:
        workdir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(workdir / "sync.log", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    workdir = args.workdir.absolute()
    root = logging.getLogger()
    level = root.level
    with scrubbed_logging():
        handlers = _logging(workdir, args.verbose, to_file=not args.dry_run)
        try:
            if args.mark_deployed:
                outcome = mark_deployed(workdir, args.mark_deployed)
            else:
                outcome = run_sync(options_from_args(args))
            (print if outcome.code == ExitCode.OK else logger.error)(redact(outcome.message))
            return int(outcome.code)
        except KeyboardInterrupt:
            logger.error("interrupted: rerun with --resume to continue")
            return int(ExitCode.INTERRUPTED)
        finally:
            for handler in handlers:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
            forget_secrets()


if __name__ == "__main__":
    sys.exit(main())
