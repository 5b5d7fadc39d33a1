"""The training loop: Mask2Former's losses, AdamW, clipping, warmup + steps, AMP on CUDA, DDP,
periodic checkpoints and evaluation, exact resume.

In-process API (what ``train_net`` and the sync-and-train tool call)::

    from barrier_annotator.training.engine import evaluate, train
    metrics = train(cfg, resume=False)      # {"segm/AP": ..., "segm/AP50": ..., "segm/AP-rail_top": ...}
    metrics = evaluate(cfg, "output/model_final.pth")

Both work in a single process or inside an initialised process group (every rank calls them;
rank 0 gets the metrics, other ranks ``{}``). Iterations are counted as detectron2 counts them:
``iteration`` in checkpoints and ``metrics.json`` is the 0-based index of the last completed one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mask2former.config.build import build_model
from mask2former.config.class_names import class_names_for

from .budget import TimeBudget
from .checkpointer import FINAL_NAME, Checkpointer, periodic_name, resume_or_load
from .criterion import SetCriterion, prepare_targets, total_loss
from .distributed import (
    all_reduce_mean,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    synchronize,
)
from .environment import choose_seed, dump_config, prepare_run, run_logging, step_seed, training_device
from .evaluation import write_metrics
from .inference import evaluate, evaluate_datasets
from .loaders import build_train_loader, load_test_records, load_train_records
from .metrics import METRICS_FILE, ScalarHistory, format_eta, truncate_metrics, write_training_line
from .plots import CURVES_FILE, try_plot_curves
from .solver import build_gradient_clipper, build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "evaluate", "train"]

LOG_PERIOD = 20
MAIN_LOSSES = ("loss_ce", "loss_mask", "loss_dice")


class TrainingDiverged(FloatingPointError):
    """A loss became NaN/inf; nothing was saved after the last good checkpoint."""

    def __init__(self, iteration: int, losses: dict[str, float], checkpoint: Path | None) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved yet"
        super().__init__(f"loss became NaN or infinite at iteration {iteration} ({terms}); {kept}. "
                         "Lower SOLVER.BASE_LR, keep SOLVER.CLIP_GRADIENTS enabled, or check the annotations")
        self.iteration, self.losses, self.checkpoint = iteration, losses, checkpoint


class TrainingInterrupted(RuntimeError):
    """Stopped by SIGINT/SIGTERM after a completed iteration; ``checkpoint`` resumes it."""

    def __init__(self, iteration: int, checkpoint: Path | None) -> None:
        where = f"saved {checkpoint}; continue with --resume" if checkpoint else "nothing new to save"
        super().__init__(f"training interrupted after {iteration} iterations: {where}")
        self.iteration, self.checkpoint = iteration, checkpoint


Callback = Callable[["Trainer"], None]


class Trainer:
    """One training run of ``cfg``; ``train()`` runs it, ``test()`` evaluates the current weights.

    ``max_seconds`` stops training (not counting evaluation) after that long and then saves
    ``model_final.pth`` and evaluates; with ``fit_schedule_to_budget`` MAX_ITER/STEPS are rescaled
    to the measured speed. ``callbacks`` run after every iteration (progress reporting, tests).
    """

    def __init__(self, cfg: CfgNode, *, resume: bool = False, max_seconds: float | None = None,
                 fit_schedule_to_budget: bool = False, progress: bool = True,
                 callbacks: Sequence[Callback] = ()) -> None:
        cfg = cfg.clone()
        cfg.freeze()
        self.cfg = cfg
        self.device = training_device(cfg)
        self.output_dir = Path(cfg.OUTPUT_DIR)
        self.metrics_path = self.output_dir / METRICS_FILE
        self.progress, self.callbacks = progress, list(callbacks)
        self.class_names = class_names_for(cfg)
        # Data first: a missing dataset fails in seconds, before a large model is built.
        self.train_records = load_train_records(cfg, self.class_names)
        self.test_sets = {name: load_test_records(cfg, name, self.class_names) for name in cfg.DATASETS.TEST}
        if cfg.TEST.AUG.ENABLED:
            logger.warning("TEST.AUG (test-time augmentation) is not implemented; evaluating without it")
        if cfg.SOLVER.REFERENCE_WORLD_SIZE:
            logger.warning("SOLVER.REFERENCE_WORLD_SIZE (detectron2's automatic batch/LR scaling) is not "
                           "implemented: IMS_PER_BATCH, BASE_LR and MAX_ITER are used as written")

        self.seed = choose_seed(cfg)
        torch.manual_seed(self.seed)
        self.model = build_model(cfg).to(self.device).train()
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.clip_gradients = build_gradient_clipper(cfg)
        self.amp = bool(cfg.SOLVER.AMP.ENABLED) and self.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not self.amp:
            logger.warning("SOLVER.AMP.ENABLED is for CUDA; training in fp32 on %s", self.device)
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.checkpointer = Checkpointer(self.model, self.output_dir, optimizer=self.optimizer,
                                         scheduler=self.scheduler, grad_scaler=self.grad_scaler,
                                         save_to_disk=is_main_process())
        state = resume_or_load(self.checkpointer, cfg.MODEL.WEIGHTS, resume)
        self.start_iter = 0 if state is None else state.start_iter
        self.last_checkpoint = None if state is None else state.path
        if state is not None and state.seed is not None and state.seed != self.seed:
            logger.info("using the resumed run's seed %d", state.seed)
            self.seed = state.seed
        self.iter = self.start_iter  # iterations completed
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        # After loading: a checkpoint's criterion.empty_weight is what upstream trains with.
        self.criterion = SetCriterion.from_config(cfg, empty_weight=self.model.criterion.empty_weight).to(self.device)
        self.network: torch.nn.Module = self.model
        if get_world_size() > 1:
            self.network = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.history = ScalarHistory(LOG_PERIOD)
        self.budget = TimeBudget(max_seconds, fit_schedule_to_budget) if max_seconds else None
        self.last_results: dict[str, float] = {}
        self._stop_signal: int | None = None
        self._replanned = False
        self._saved_at = self.start_iter if state is not None else -1

    # ---------------------------------------------------------------- one iteration
    def run_step(self, data: Iterator) -> bool:
        """Forward, losses, backward, clip, step; returns whether any rank was asked to stop."""
        started = time.perf_counter()
        images, targets = next(data)
        data_time = time.perf_counter() - started
        torch.manual_seed(step_seed(self.seed, self.iter, get_rank()))
        batch, _ = self.model.preprocess(images)
        targets = [{"labels": t["labels"].to(self.device, non_blocking=True),
                    "masks": t["masks"].to(self.device, non_blocking=True)} for t in targets]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.network(batch)
        losses = self.criterion(outputs, prepare_targets(targets, (int(batch.shape[-2]), int(batch.shape[-1]))))
        loss = total_loss(losses)
        # One collective per step: loss terms for the log, NaN on any rank, and stop requests.
        flags = torch.tensor([float(self._stop_signal is not None)], device=self.device)
        reduced = all_reduce_mean(torch.cat([torch.stack([v.detach().float() for v in losses.values()]), flags]))
        values = reduced.tolist()
        loss_values = dict(zip(losses, values[:-1], strict=True))
        total = math.fsum(loss_values.values())
        if not math.isfinite(total):
            raise TrainingDiverged(self.iter, loss_values, self.last_checkpoint)
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.unscale_(self.optimizer)
        grad_norm = self.clip_gradients(self.optimizer)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        lr = max(group["lr"] for group in self.optimizer.param_groups)
        self.scheduler.step()
        self.iter += 1
        extra = {} if grad_norm is None else {"grad_norm": grad_norm}
        self.history.put(total_loss=total, **loss_values, lr=lr, time=time.perf_counter() - started,
                         data_time=data_time, **extra)
        return values[-1] > 0

    # ---------------------------------------------------------------- the loop
    def train(self) -> dict[str, float]:
        """Train to SOLVER.MAX_ITER (or the time budget), evaluate; rank 0 returns the metrics."""
        if is_main_process():
            truncate_metrics(self.metrics_path, self.start_iter)
        if self.iter >= self.max_iter:
            logger.info("training already complete (%d of %d iterations)", self.iter, self.max_iter)
        else:
            logger.info("training from iteration %d to %d on %s (%d worker(s), batch %d)", self.iter,
                        self.max_iter, self.device, get_world_size(), self.cfg.SOLVER.IMS_PER_BATCH)
            self._loop()
        results = self.test() if self.test_sets else {}
        if is_main_process():
            try_plot_curves(self.metrics_path, self.output_dir / CURVES_FILE, self._plot_title())
        return results

    def _loop(self) -> None:
        loader = build_train_loader(self.cfg, self.train_records, self.seed, self.iter)
        data = iter(loader)
        bar = tqdm(total=self.max_iter, initial=self.iter, desc="train", unit="it", dynamic_ncols=True,
                   disable=not (self.progress and is_main_process()),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        if self.budget is not None:
            self.budget.start()
        try:
            with self._stop_on_signals(), logging_redirect_tqdm():
                while self.iter < self.max_iter:
                    if self.budget is not None and broadcast_object(self.budget.exceeded()):
                        logger.info("time budget of %.0f s used up after %d iterations", self.budget.seconds,
                                    self.iter)
                        self._save(FINAL_NAME)
                        break
                    stop = self.run_step(data)
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.history.median('total_loss'):.3g}",
                                    lr=f"{self.history.latest('lr'):.2e}", refresh=False)
                    self._after_step()
                    bar.total = self.max_iter  # a budget-fitted schedule may have changed it
                    if stop:
                        path = self._save(periodic_name(self.iter - 1))
                        synchronize()  # no rank exits (and gets its peers terminated) before rank 0 saved
                        raise TrainingInterrupted(self.iter, path)
        except TrainingDiverged as error:
            logger.error("%s", error)
            raise
        except TrainingInterrupted as error:
            logger.warning("%s", error)
            raise
        finally:
            bar.close()
            del data  # shuts the loader workers down now, not at garbage collection

    def _after_step(self) -> None:
        done = self.iter
        if self.budget is not None:
            self.budget.record_step(self.history.latest("time"))
            if self.budget.plan_due():
                # Rank 0's clock decides for everyone: ranks with different plans would deadlock.
                steps = tuple(self.cfg.SOLVER.STEPS)
                plan = broadcast_object(self.budget.plan(done, self.max_iter, steps) if is_main_process() else None)
                if plan is not None:
                    self._replan(*plan)
        if done % LOG_PERIOD == 0 or done == self.max_iter or done == self.start_iter + 1:
            self._log()
        period = int(self.cfg.SOLVER.CHECKPOINT_PERIOD)
        if done == self.max_iter:
            self._save(FINAL_NAME)
        elif period > 0 and done % period == 0:
            self._save(periodic_name(done - 1))
        eval_period = int(self.cfg.TEST.EVAL_PERIOD)
        if eval_period > 0 and done % eval_period == 0 and done != self.max_iter and self.test_sets:
            self.test()
            if is_main_process():
                try_plot_curves(self.metrics_path, self.output_dir / CURVES_FILE, self._plot_title())
        for callback in self.callbacks:
            callback(self)

    def _replan(self, max_iter: int, steps: tuple[int, ...]) -> None:
        """Adopt a budget-fitted schedule. The first plan also scales the evaluation and checkpoint
        periods (as many evaluations as the config asked for); later ones leave them, so that
        evaluations stay evenly spaced."""
        cfg = self.cfg.clone()
        cfg.defrost()
        if not self._replanned:
            scale = max_iter / self.max_iter
            for node, key in ((cfg.TEST, "EVAL_PERIOD"), (cfg.SOLVER, "CHECKPOINT_PERIOD")):
                if node[key] > 0:
                    node[key] = max(1, round(node[key] * scale))
            self._replanned = True
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = max_iter, steps
        cfg.freeze()
        state = self.scheduler.state_dict()
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.scheduler.load_state_dict(state)
        self.checkpointer.scheduler = self.scheduler
        self.cfg, self.max_iter = cfg, max_iter
        if is_main_process():
            dump_config(cfg, self.output_dir)

    def _log(self) -> None:
        smoothed = self.history.smoothed()
        eta = smoothed.get("time", math.nan) * (self.max_iter - self.iter)
        if is_main_process():
            write_training_line(self.metrics_path, self.iter - 1, {**smoothed, "eta_seconds": eta})
        terms = "  ".join(f"{k}: {smoothed[k]:.4g}" for k in ("total_loss", *MAIN_LOSSES) if k in smoothed)
        logger.info("iter: %d/%d  %s  lr: %.3g  time: %.3f s  data: %.3f s  eta: %s", self.iter, self.max_iter,
                    terms, self.history.latest("lr"), smoothed.get("time", math.nan),
                    smoothed.get("data_time", math.nan), format_eta(eta))

    def _save(self, name: str) -> Path | None:
        """Checkpoint the state after ``self.iter`` iterations (periodic files once per iteration count;
        ``model_final`` always, it is the file users look for)."""
        if self.iter == 0 or (self._saved_at == self.iter and name != FINAL_NAME):
            return self.last_checkpoint
        path = self.checkpointer.save(name, self.iter - 1, seed=self.seed)
        self._saved_at = self.iter
        self.last_checkpoint = path or self.output_dir / f"{name}.pth"
        return self.last_checkpoint

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """First SIGINT/SIGTERM: finish the iteration, save, stop. Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: object) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            logger.warning("%s: stopping after this iteration and saving a checkpoint (again to abort at once)",
                           signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def request_stop(self) -> None:
        """Stop as a signal would (from a callback or another thread)."""
        self._stop_signal = signal.SIGINT

    # ---------------------------------------------------------------- evaluation
    def test(self) -> dict[str, float]:
        """COCO mask metrics of the current weights on DATASETS.TEST, logged to metrics.json."""
        started = time.perf_counter()
        results = evaluate_datasets(self.cfg, self.model, self.test_sets, self.class_names, self.device,
                                    progress=self.progress)
        if is_main_process() and results:
            write_metrics(self.metrics_path, results, iteration=self.iter - 1 if self.iter else None, prefix="")
        if self.budget is not None:
            self.budget.exclude(time.perf_counter() - started)
        self.last_results = results
        return results

    def _plot_title(self) -> str:
        return f"{Path(self.output_dir).resolve().name}: {self.iter} iterations"


def train(cfg: CfgNode, resume: bool = False, *, max_seconds: float | None = None,
          fit_schedule_to_budget: bool = False, progress: bool = True,
          callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train ``cfg`` (resuming OUTPUT_DIR's last checkpoint with ``resume``); final metrics on rank 0."""
    with run_logging(cfg.OUTPUT_DIR):
        prepare_run(cfg)
        trainer = Trainer(cfg, resume=resume, max_seconds=max_seconds,
                          fit_schedule_to_budget=fit_schedule_to_budget, progress=progress, callbacks=callbacks)
        return trainer.train()
