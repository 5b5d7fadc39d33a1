"""The model's face on every command line: one set of model options, one predictor builder, one
log format, and the one place where the environment becomes configuration.

Every command that runs the model (``barrier-predict``, ``barrier-label``, ``barrier-serve``,
``barrier-prepare-openvino``, the cvat-sdk function, the Nuclio function) takes the same options
with the same defaults: device ``auto``, backend and precision from the config's ``DEPLOY`` node,
the score threshold from ``DEPLOY.SCORE_THRESHOLD`` unless given. The deployment environment
variables are read here, by the entry points, and passed down as config overrides:

- ``BARRIER_BACKEND`` -> ``DEPLOY.BACKEND`` (auto, torch, openvino);
- ``BARRIER_PRECISION`` -> ``DEPLOY.PRECISION`` (auto, fp32, bf16, fp16);
- ``BARRIER_OV_CACHE`` -> ``DEPLOY.CACHE_DIR`` (the OpenVINO converted/compiled-model cache);
- ``BARRIER_OPTS``: any further ``KEY VALUE`` overrides, shell-quoted.

Explicit flags and ``--opts`` win over the environment, which wins over the config file.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from fvcore.common.config import CfgNode

from .config import ConfigError, load_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_CONFIG = "configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
ENVIRONMENT_KEYS = {"BARRIER_BACKEND": "DEPLOY.BACKEND", "BARRIER_PRECISION": "DEPLOY.PRECISION",
                    "BARRIER_OV_CACHE": "DEPLOY.CACHE_DIR"}
OPTS_VARIABLE = "BARRIER_OPTS"
MODEL_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError)
"""What building a predictor raises for a bad config, weights file or option: one line, exit 2."""


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging in the product's one format."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def environment_opts(environ: Mapping[str, str] | None = None) -> list[str]:
    """``KEY VALUE`` config overrides from the deployment environment (see the module docstring)."""
    environ = os.environ if environ is None else environ
    opts: list[str] = []
    for variable, key in ENVIRONMENT_KEYS.items():
        if environ.get(variable):
            opts += [key, environ[variable]]
    extra = shlex.split(environ.get(OPTS_VARIABLE, ""))
    if len(extra) % 2:
        raise ConfigError(f"${OPTS_VARIABLE} must hold KEY VALUE pairs, got {len(extra)} words: {extra}")
    return opts + extra


def add_model_arguments(parser: argparse.ArgumentParser, *, config_required: bool = False,
                        threshold: bool = True) -> None:
    """``--config-file``, ``--weights``, ``--device``, ``--backend``, ``--precision``,
    ``--confidence-threshold`` and ``--opts``, with the product's defaults."""
    group = parser.add_argument_group("model")
    if config_required:
        group.add_argument("--config-file", required=True, help="detectron2-style YAML config")
    else:
        group.add_argument("--config-file", default=DEFAULT_CONFIG, help="detectron2-style YAML config "
                                                                          "(default %(default)s)")
    group.add_argument("--weights", help="checkpoint (.pkl/.pth), URL or model-zoo name; default MODEL.WEIGHTS")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    group.add_argument("--backend", default=None, choices=("auto", "torch", "openvino"),
                       help="default: $BARRIER_BACKEND, else the config's DEPLOY.BACKEND (auto: OpenVINO on CPU "
                            "when installed)")
    group.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                       help="default: the config's DEPLOY.PRECISION")
    if threshold:
        group.add_argument("--confidence-threshold", type=float, default=None,
                           help="minimum instance score (default: the config's DEPLOY.SCORE_THRESHOLD)")
    group.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")


def model_config(config_file: str | os.PathLike[str], opts: Sequence[str] = (),
                 environ: Mapping[str, str] | None = None) -> CfgNode:
    """The config file, then the environment's overrides, then ``opts``."""
    return load_config(config_file, [*environment_opts(environ), *opts])


def predictor_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """The :class:`~mask2former.predictor.Predictor` that :func:`add_model_arguments`' options ask for;
    ``overrides`` replace any of its keyword arguments."""
    from .predictor import Predictor  # builds torch and the backends: only when a model is wanted

    cfg = model_config(args.config_file, args.opts)
    options: dict[str, Any] = {"weights": args.weights, "device": args.device, "backend": args.backend,
                               "precision": args.precision,
                               "score_threshold": getattr(args, "confidence_threshold", None)}
    options.update(overrides)
    return Predictor(cfg, **options)
