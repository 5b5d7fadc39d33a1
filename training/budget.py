"""A wall-clock budget for training (benchmarks, scheduled retraining): stop in time, and
optionally fit the LR schedule into the time available.

Only training counts against the budget; evaluation passes are excluded so that evaluating more
often does not change how long the model trains. With ``fit_schedule`` the run measures its
speed and rescales SOLVER.MAX_ITER and the SOLVER.STEPS still ahead so that the run ends, LR
drops included, when the budget does (re-planned as it goes: a shared machine's speed drifts).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

WARMUP_STEPS = 5  # the first steps are slow (allocator, thread pools): not used to measure speed
PLAN_EVERY = 25


@dataclass
class TimeBudget:
    seconds: float
    fit_schedule: bool = False
    _start: float = field(default=0.0, init=False)
    _excluded: float = field(default=0.0, init=False)
    _step_times: list[float] = field(default_factory=list, init=False)

    def start(self) -> None:
        self._start = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Time spent outside training (evaluation) that does not count."""
        self._excluded += seconds

    def record_step(self, seconds: float) -> None:
        self._step_times.append(seconds)

    @property
    def used(self) -> float:
        return time.perf_counter() - self._start - self._excluded

    @property
    def remaining(self) -> float:
        return self.seconds - self.used

    def exceeded(self) -> bool:
        return self.used >= self.seconds

    def plan_due(self) -> bool:
        """Every PLAN_EVERY recorded steps (the same iterations on every rank)."""
        return self.fit_schedule and bool(self._step_times) and len(self._step_times) % PLAN_EVERY == 0

    def seconds_per_step(self) -> float | None:
        """Recent median step time (a shared machine's speed drifts; the first steps are slower)."""
        measured = self._step_times[WARMUP_STEPS:]
        if len(measured) < 10:
            return None
        return statistics.median(measured[-100:])

    def plan(self, done: int, max_iter: int, steps: tuple[int, ...]) -> tuple[int, tuple[int, ...]] | None:
        """New (MAX_ITER, STEPS) fitting the remaining time, or None to keep the current plan.

        Called when :meth:`plan_due`, with ``done`` iterations completed; no new plan in the last
        PLAN_EVERY iterations. LR steps still ahead keep their relative position in the run; steps
        already taken stay where they were.
        """
        if not self.fit_schedule:
            return None
        speed = self.seconds_per_step()
        if speed is None:
            return None
        ahead = int(self.remaining / speed)
        if ahead < PLAN_EVERY:
            return None
        new_max = done + ahead
        if abs(new_max - max_iter) <= max(2, 0.01 * max_iter):
            return None
        scale = new_max / max_iter
        new_steps = tuple(step if step <= done else max(done + 1, round(step * scale)) for step in steps)
        logger.info("time budget: %.2f s/iter, %.0f s left -> SOLVER.MAX_ITER %d -> %d, STEPS %s -> %s",
                    speed, self.remaining, max_iter, new_max, list(steps), list(new_steps))
        return new_max, new_steps
