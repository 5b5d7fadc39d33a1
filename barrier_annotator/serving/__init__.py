"""Serving the model to CVAT: request validation, the model handler, the interactor rule, Nuclio glue.

Every CVAT entry point (Nuclio detector and interactor, the local server, the native cvat-sdk
function) goes through :class:`ModelHandler`; the encodings themselves live in ``barrier_annotator.cvat``.
"""

from .handler import DETECTOR, INTERACTOR, KINDS, ModelHandler, Reply
from .interactor import Prompt, choose_instance
from .requests import DEFAULT_MAX_PIXELS, RequestError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DETECTOR",
    "INTERACTOR",
    "KINDS",
    "ModelHandler",
    "Prompt",
    "Reply",
    "RequestError",
    "choose_instance",
]
