"""Choose the frames to label next: ``barrier-select --input frames/ --output selection/ --count 50``.

Scores every candidate frame with the model (uncertainty from its class scores and mask
probabilities, optionally a mirror-image check with ``--flip``, and an embedding), then picks
``--count`` of them with ``--strategy``: ``hybrid`` (default: uncertain frames, no two
near-duplicates), ``uncertainty``, ``diversity`` (k-center greedy on the embeddings) or ``random``.

Where the frames come from:

- ``--input DIR``: a folder of images, or an unpacked "CVAT for images 1.1" export (``images/`` +
  ``annotations.xml``; frames with a shape a person drew count as labelled);
- ``--host URL --project ID`` / ``--task ID``: the frames of every job that is not completed
  (downloaded once per job version into ``--output``); frames of completed jobs are never chosen.

``--output`` gets ``selection.json``/``.csv`` (the chosen frames, ranked, with their scores and why),
``scores.csv`` (every candidate), ``contact_sheet.jpg`` (the chosen frames with the model's masks) and
``scores.png``; keep it between runs: it holds the score cache (an interrupted run continues where
it stopped) and ``chosen.json``, the ledger that keeps a frame chosen once from being chosen again
(``--ledger`` shares one between output folders). Frames are identified by content (SHA-256).

``--create-task NAME`` creates a CVAT task in the same project (``--project``; with ``--task``, the
task's project, or its labels when it has none) holding the chosen frames, pre-labelled with the
model's shapes (``source`` "semi-auto", sent through CVAT's annotations API), so annotators correct
instead of draw. Token: ``CVAT_ACCESS_TOKEN``; or ``--auth USER``
with ``CVAT_PASSWORD``. A creation that was cut off is finished by the next run with ``--create-task``.

Exit status: 0 done, 1 some frames could not be read or scored (listed in selection.json and the
log; the others were scored and chosen from), 2 bad options, input or model, 3 CVAT refused or
unreachable, 130 interrupted (scores so far are kept: run again).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from barrier_annotator.labelling import model_identity
from barrier_annotator.selection.frames import SourceError, input_pool
from barrier_annotator.selection.ledger import LedgerError
from barrier_annotator.selection.run import SelectOptions, choose_frames
from barrier_annotator.selection.strategies import STRATEGIES
from barrier_annotator.sync.redact import forget_secrets, redact, scrubbed_logging
from mask2former.command_line import MODEL_ERRORS, add_model_arguments, predictor_from_args, setup_logging

logger = logging.getLogger("barrier-select")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barrier-select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("frames (one source)")
    source.add_argument("--input", type=Path, help="folder of images, or an unpacked CVAT for images 1.1 export")
    source.add_argument("--project", type=int, action="append", default=[], metavar="ID",
                        help="CVAT project: frames of its jobs that are not completed (repeatable); with "
                             "--input, the project --create-task creates the task in")
    source.add_argument("--task", type=int, action="append", default=[], metavar="ID",
                        help="CVAT task: frames of its jobs that are not completed (repeatable)")
    choice = parser.add_argument_group("choice")
    choice.add_argument("--output", required=True, type=Path, help="outputs, score cache and ledger (keep it)")
    choice.add_argument("--count", required=True, type=int, help="frames to choose")
    choice.add_argument("--strategy", default="hybrid", choices=STRATEGIES, help="default %(default)s")
    choice.add_argument("--seed", type=int, default=0, help="tie-breaks and the random strategy")
    choice.add_argument("--flip", action="store_true",
                        help="also score how much the instances change on the mirror image (a second pass)")
    choice.add_argument("--ledger", type=Path, default=None,
                        help="ledger of chosen frames (default OUTPUT/chosen.json)")
    choice.add_argument("--workers", type=int, default=2, help="threads reading frames ahead")
    choice.add_argument("--no-pictures", dest="pictures", action="store_false", help="no contact sheet or plot")
    choice.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    cvat = parser.add_argument_group("CVAT (token: CVAT_ACCESS_TOKEN; password: CVAT_PASSWORD)")
    cvat.add_argument("--host", help="CVAT server URL")
    cvat.add_argument("--auth", metavar="USER", help="log in as USER with a password instead of a token")
    cvat.add_argument("--org", dest="organization", metavar="SLUG", default=None, help="organization context")
    cvat.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    cvat.add_argument("--create-task", metavar="NAME", help="create a CVAT task with the chosen frames, pre-labelled")
    cvat.add_argument("--polygons", action="store_true", help="pre-label labels of type 'any' with polygons")
    cvat.add_argument("--retries", type=int, default=5, help="attempts per CVAT request")
    cvat.add_argument("--retry-backoff", type=float, default=2.0, metavar="S", help="first wait between attempts")
    cvat.add_argument("--poll-period", type=float, default=2.0, metavar="S", help="export/creation status polling")
    cvat.add_argument("--export-timeout", type=float, default=3600.0, metavar="S", help="per job export")
    add_model_arguments(parser)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from_cvat = bool(args.task or (args.project and args.input is None))
    if args.input is None and not from_cvat:
        parser.error("give --input DIR, or --host with --project/--task")
    if args.input is not None and args.task:
        parser.error("--input and --task are two sources: give one")
    if (from_cvat or args.create_task) and not args.host:
        parser.error("--host is required for CVAT (--project/--task as a source, or --create-task)")
    if args.create_task and args.input is not None and len(args.project) != 1:
        parser.error("--create-task with --input needs --project ID: the project the task goes into")
    if args.auth and ":" in args.auth:
        parser.error("--auth takes a user name only: put the password in CVAT_PASSWORD")
    if args.count < 1:
        parser.error("--count must be at least 1")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    with scrubbed_logging():
        try:
            return _run(args)
        except KeyboardInterrupt:
            logger.error("interrupted: the scores computed so far are kept; run again to continue")
            return 130
        finally:
            forget_secrets()


def _run(args: argparse.Namespace) -> int:
    from barrier_annotator.selection.scorer import FrameScorer, ScorerSettings
    from barrier_annotator.sync.cvat_client import CvatError

    try:
        predictor = predictor_from_args(args)
    except MODEL_ERRORS as error:
        logger.error("%s", error)
        return 2
    scorer = FrameScorer(predictor, ScorerSettings(flip=args.flip))
    logger.info("model: %s (%s), threshold %.2f", args.config_file, scorer.description, predictor.score_threshold)
    options = SelectOptions(output=args.output, count=args.count, strategy=args.strategy, seed=args.seed,
                            ledger=args.ledger, model=model_identity(predictor.cfg, args.weights),
                            workers=args.workers, progress=args.progress, pictures=args.pictures)
    client = None
    try:
        if args.host:
            from barrier_annotator.selection.cvat_source import open_client

            client = open_client(args)
        if args.create_task and client is not None:
            from barrier_annotator.selection.handoff import finish_pending
            from barrier_annotator.selection.ledger import Ledger

            finished = finish_pending(client, Ledger(options.ledger_path))
            if finished is not None:
                run_id, task = finished
                print(f"finished the task of selection {run_id}: CVAT task {task['id']} {task['name']!r} "
                      f"({task.get('frames')} frames); run again to choose more")
                return 0
        if args.input is not None:
            pool, exclude, labels, project = input_pool(args.input, skip=args.output), frozenset(), None, None
            if args.create_task:
                from barrier_annotator.selection.handoff import cvat_labels

                project = args.project[0]
                labels = cvat_labels(client, project_id=project)
        else:
            from barrier_annotator.selection.cvat_source import pool_from_cvat

            pool, exclude, labels, project = pool_from_cvat(client, args)
        logger.info("frames: %s", pool.description)
        result = choose_frames(scorer, pool, SelectOptions(**{**options.__dict__, "exclude": exclude}))
        task = None
        if args.create_task and not result.chosen:
            logger.warning("no frame left to choose: no task created")
        elif args.create_task:
            from barrier_annotator.selection.handoff import hand_over
            from barrier_annotator.selection.ledger import Ledger

            task = hand_over(client, result, Ledger(options.ledger_path), args.output, name=args.create_task,
                             project_id=project, labels=labels or [], class_names=predictor.class_names,
                             polygons=args.polygons)
    except (SourceError, LedgerError, ValueError) as error:
        logger.error("%s", error)
        return 2
    except CvatError as error:
        logger.error("%s", redact(str(error)))
        return 3
    except OSError as error:
        logger.error("cannot write the output: %s", error)
        return 2
    finally:
        if client is not None:
            from barrier_annotator.sync.pull import close_client

            close_client(client)
    _summary(result, task)
    return result.exit_code


def _summary(result, task) -> None:
    counts = result.document["counts"]
    logger.info("%d candidate frames (%d scored now, %d scores reused; %d chosen before, %d labelled, %d duplicates "
                "left out), %d skipped", counts["candidates"], counts["scored"], counts["reused_scores"],
                counts["excluded_chosen_before"], counts["excluded_labelled"], counts["duplicates"],
                counts["skipped"])
    for reason, items in result.scored.skipped.items():
        logger.warning("skipped (%s): %d frame(s)", reason, len(items))
        for item in items[:5]:
            logger.warning("  %s", item)
    for frame in result.chosen[:10]:
        logger.info("#%d %s: %s", frame.pick.rank, frame.scored.frame.name, frame.why)
    if len(result.chosen) > 10:
        logger.info("... %d more in %s", len(result.chosen) - 10, result.files.get("csv"))
    print(f"chose {len(result.chosen)} frame(s) ({result.document['strategy']}): {result.files.get('csv')}"
          + (f"; CVAT task {task['id']} {task['name']!r}" if task else ""))


if __name__ == "__main__":
    sys.exit(main())
