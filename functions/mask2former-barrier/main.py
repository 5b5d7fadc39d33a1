"""Nuclio entry points (``main:handler``) of the mask2former-barrier CVAT functions.

Thin on purpose: the handler logic is ``barrier_annotator.serving`` (shared with the local server and
the native cvat-sdk function); ``model_handler.py`` turns this function's environment into it.
"""

import model_handler

from barrier_annotator.serving.nuclio import init_worker, respond


def init_context(context):
    """Once per worker: load the model and keep the handler on ``context.user_data``."""
    context.logger.info("loading the barrier model...")
    init_worker(context, model_handler.create, model_handler.function_kind())


def handler(context, event):
    """One CVAT request (detector or interactor, see BARRIER_FUNCTION_KIND) -> JSON response."""
    return respond(context, event)
