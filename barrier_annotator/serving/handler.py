"""The one model handler behind every CVAT entry point: the Nuclio detector and interactor
(``functions/``), the local server and the native cvat-sdk function (``tools/``).

It turns a request body into a :class:`Reply` (status, JSON text) and never raises: refusals
are 4xx with ``{"error": ...}`` and a WARNING log line with the reason (CVAT shows its user only
"400 Client Error", so the function's log is where the reason is read), anything unexpected is a
500 logged with its traceback, and the worker goes on serving the next frame (a CVAT batch job
fails whole on one error).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mask2former.structures import Instances

from ..cvat.payloads import detector_response_json, interactor_shape
from ..cvat.polygons import DEFAULT_EPSILON
from .interactor import Prompt, choose_instance
from .requests import (
    DEFAULT_MAX_PIXELS,
    RequestError,
    describe_body,
    parse_detector_request,
    parse_interactor_request,
)

logger = logging.getLogger(__name__)

DETECTOR, INTERACTOR = "detector", "interactor"
KINDS = (DETECTOR, INTERACTOR)
DEFAULT_INTERACTOR_THRESHOLD = 0.1
"""Lower than the detector's: the user points at the object, so a weak instance is still wanted."""


class InstancePredictor(Protocol):
    """What the handler needs from :class:`mask2former.predictor.Predictor` (tests inject fakes)."""

    class_names: tuple[str, ...]
    score_threshold: float

    def __call__(self, image: np.ndarray, *, score_threshold: float | None = None) -> Instances: ...


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body text, content type (always JSON here)."""

    status: int
    body: str
    content_type: str = "application/json"

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls(status, json.dumps({"error": message}))


class ModelHandler:
    """Runs the predictor on CVAT requests and encodes its instances in CVAT's formats."""

    def __init__(
        self,
        predictor: InstancePredictor,
        *,
        default_threshold: float | None = None,
        interactor_threshold: float = DEFAULT_INTERACTOR_THRESHOLD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        polygon_epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        self.predictor = predictor
        self.default_threshold = float(predictor.score_threshold if default_threshold is None else default_threshold)
        self.interactor_threshold = float(interactor_threshold)
        self.max_pixels = int(max_pixels)
        self.polygon_epsilon = float(polygon_epsilon)

    @classmethod
    def from_files(
        cls,
        config_file: str | Path,
        weights: str | Path | None = None,
        *,
        device: str = "auto",
        backend: str | None = None,
        opts: Sequence[str] = (),
        **handler_options: Any,
    ) -> ModelHandler:
        """Load config and weights once (per worker); weights are a file, a URL or a model-zoo name.
        ``opts`` are config overrides (the entry points add the environment's, see
        ``mask2former.command_line.environment_opts``)."""
        from mask2former.predictor import Predictor  # heavy import, only where a real model is built

        predictor = Predictor.from_config_file(config_file, weights, opts, device=device, backend=backend)
        logger.info("model ready: %s, classes %s", predictor.backend_description, list(predictor.class_names))
        return cls(predictor, **handler_options)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.predictor.class_names)

    # --- model ----------------------------------------------------------------------------

    def predict(self, image: np.ndarray, threshold: float) -> Instances:
        """Instances scoring ``>= threshold``, best first; the predictor guarantees every mask has a pixel."""
        return self.predictor(image, score_threshold=threshold)

    # --- encodings ------------------------------------------------------------------------

    def detector_json(self, instances: Instances) -> str:
        """The detector response body: a JSON array, one mask item per instance (``[]`` when none)."""
        shapes = ((label, *instances.mask_crop(index), float(instances.scores[index]))
                  for index, label in enumerate(instances.labels))
        return detector_response_json(shapes, epsilon=self.polygon_epsilon)

    # --- requests -------------------------------------------------------------------------

    def handle(self, body: Any, kind: str = DETECTOR) -> Reply:
        """Answer one request of ``kind`` (detector or interactor); never raises."""
        start = time.perf_counter()
        try:
            if kind == DETECTOR:
                reply = self._detect(body)
            elif kind == INTERACTOR:
                reply = self._interact(body)
            else:
                raise ValueError(f"unknown function kind {kind!r}; expected one of {KINDS}")
        except RequestError as error:
            # CVAT shows the user only "400 Client Error": this line is where the reason is found
            logger.warning("%s request refused (%d): %s; the request had %s", kind, error.status, error.message,
                           describe_body(body))
            return Reply.error(error.status, error.message)
        except Exception as error:  # the worker must survive anything one frame does
            logger.exception("%s request failed", kind)
            return Reply.error(500, f"internal error: {type(error).__name__}: {error}")
        logger.info("%s request answered in %.2f s", kind, time.perf_counter() - start)
        return reply

    def _detect(self, body: Any) -> Reply:
        request = parse_detector_request(body, default_threshold=self.default_threshold, max_pixels=self.max_pixels)
        instances = self.predict(request.image, request.threshold)
        return Reply(200, self.detector_json(instances))

    def _interact(self, body: Any) -> Reply:
        request = parse_interactor_request(body, default_threshold=self.interactor_threshold,
                                           max_pixels=self.max_pixels)
        instances = self.predict(request.image, request.threshold)
        chosen = choose_instance(instances, Prompt(request.positive, request.negative, request.box))
        shapes = []
        if chosen is not None:
            crop, box = instances.mask_crop(chosen)
            shapes.append(interactor_shape(crop, box))
        return Reply(200, json.dumps({"shapes": shapes}, separators=(",", ":")))
