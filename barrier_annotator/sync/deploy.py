"""Packaging a model for ``functions/mask2former-barrier`` and running ``deploy.sh``.

A package is ``<workdir>/deployments/<run id>/`` with ``model_final.pth`` (model weights only: the
optimizer state is dead weight in a serving image) and the run's full, flat ``config.yaml``
(deploy.sh refuses ``_BASE_`` chains outside the repository). It is built in a hidden temporary
folder and renamed into place. ``deployed.json`` names the package that is live; it is written
only after ``deploy.sh`` succeeded, so a failed training or deployment leaves it untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mask2former.utils import atomic_write_json, atomic_write_with, file_sha256

from ..checkout import CheckoutNotFoundError, checkout_path
from .redact import child_environment

logger = logging.getLogger(__name__)

DEPLOYED_FILE = "deployed.json"


class DeployError(RuntimeError):
    """Packaging or deploy.sh failed; the deployed model is unchanged."""


@dataclass
class Deployment:
    """What ``deployed.json`` records about the live model."""

    run_id: str
    round: int
    weights: str
    weights_sha256: str
    config: str
    metrics: dict[str, float | None] = field(default_factory=dict)  # NaN is written (and read back) as None
    deployed_at: str = ""
    command: list[str] = field(default_factory=list)


def load_deployed(workdir: Path) -> Deployment | None:
    """The live model, checked against its recorded hash; DeployError if its files are gone or changed."""
    path = workdir / DEPLOYED_FILE
    if not path.is_file():
        return None
    deployment = Deployment(**json.loads(path.read_text(encoding="utf-8")))
    weights = Path(deployment.weights)
    if not weights.is_file() or not Path(deployment.config).is_file():
        raise DeployError(f"{path} names {weights} / {deployment.config}, which no longer exist; restore them "
                          f"or remove {path} to start without a deployed model")
    if file_sha256(weights) != deployment.weights_sha256:
        raise DeployError(f"{weights} changed since it was deployed (sha256 mismatch with {path})")
    return deployment


def record_deployment(workdir: Path, deployment: Deployment) -> None:
    atomic_write_json(workdir / DEPLOYED_FILE, asdict(deployment))


def package(weights: Path, config: Path, destination: Path) -> tuple[Path, Path]:
    """``destination/{model_final.pth,config.yaml}``, complete or absent."""
    if destination.is_dir() and (destination / "model_final.pth").is_file() and (destination / "config.yaml").is_file():
        return destination / "model_final.pth", destination / "config.yaml"  # a resumed run packaged it already
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        slim: dict[str, Any] = {"model": state["model"] if isinstance(state, dict) and "model" in state else state}
        if isinstance(state, dict) and "iteration" in state:
            slim["iteration"] = state["iteration"]
        atomic_write_with(staging / "model_final.pth", lambda handle: torch.save(slim, handle))
        shutil.copyfile(config, staging / "config.yaml")
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination / "model_final.pth", destination / "config.yaml"


def default_deploy_script() -> Path:
    """``deploy.sh`` of the source checkout: it stages that checkout's code into the function image."""
    try:
        return checkout_path("deploy.sh")
    except CheckoutNotFoundError as error:
        raise DeployError(f"{error}; or give --deploy-script") from None


def deploy_command(script: Path | None, weights: Path, config: Path, *, gpu: bool = False) -> list[str]:
    """``deploy.sh [--gpu] --weights FILE --config FILE`` (the detector function); ``script`` None:
    the checkout's."""
    script = script or default_deploy_script()
    return [str(script), *(["--gpu"] if gpu else []), "--weights", str(weights), "--config", str(config)]


def run_deploy(command: list[str], timeout: float | None = None) -> None:
    """Run deploy.sh with its output on our console, without the CVAT credentials in its environment."""
    script = Path(command[0])
    if not script.is_file():
        raise DeployError(f"deploy script not found: {script} (give --deploy-script, or --no-deploy to print "
                          f"the command)")
    logger.info("deploying: %s", shlex.join(command))
    try:
        status = subprocess.run(command, env=child_environment(), check=False, timeout=timeout,
                                cwd=script.parent).returncode
    except subprocess.TimeoutExpired:
        raise DeployError(f"{script.name} did not finish within {timeout:.0f} s") from None
    except OSError as error:
        raise DeployError(f"cannot run {script}: {error}") from None
    if status != 0:
        raise DeployError(f"{script.name} exited with status {status}; the previously deployed model is unchanged")
