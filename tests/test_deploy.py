"""deploy.sh without Docker: fake ``nuctl`` / ``docker`` executables on a minimal PATH record their
arguments; the tests check the refusals, the staged build context and the exact commands issued."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy.sh"
BASH = shutil.which("bash") or "/bin/bash"
TOOLS = ("bash", "dirname", "basename", "rm", "mkdir", "cp", "find", "grep", "cat")
NETWORK_CONFIG = '{"attributes": {"network": "cvat_cvat"}}'
TINY_REL = "configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"

FAKE = """#!/bin/bash
printf '%q ' "${0##*/}" "$@" >> "$FAKE_LOG"
echo >> "$FAKE_LOG"
if [[ "${0##*/}" == docker && "$1" == info ]]; then exit "${FAKE_DOCKER_INFO_RC:-0}"; fi
if [[ "${0##*/}" == nuctl && "$1" == create ]]; then
    echo "${FAKE_CREATE_OUTPUT:-project created}"
    exit "${FAKE_CREATE_RC:-0}"
fi
if [[ "${0##*/}" == nuctl && "$1" == deploy ]]; then exit "${FAKE_DEPLOY_RC:-0}"; fi
exit 0
"""

FAKE_PYTHON = """#!/bin/bash
printf '%q ' python "$@" >> "$FAKE_LOG"
echo >> "$FAKE_LOG"
echo "$FAKE_DOWNLOADED"
"""


class Sandbox:
    """A PATH with only the coreutils deploy.sh needs plus the chosen fakes, and a log of calls."""

    def __init__(self, root: Path, fakes: tuple[str, ...] = ("nuctl", "docker")) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for tool in TOOLS:
            os.symlink(shutil.which(tool), self.bin / tool)
        for fake in fakes:
            (self.bin / fake).write_text(FAKE)
            (self.bin / fake).chmod(0o755)
        (root / "python").write_text(FAKE_PYTHON)
        (root / "python").chmod(0o755)
        self.log = root / "calls.log"
        self.stage = root / "stage"
        self.weights = root / "model_final.pth"
        self.weights.write_bytes(b"not really a checkpoint")

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {"PATH": str(self.bin), "FAKE_LOG": str(self.log), "BARRIER_DEPLOY_STAGE": str(self.stage),
                       "PYTHON": str(self.root / "python"), "HOME": str(self.root), **env}
        return subprocess.run([BASH, str(DEPLOY), *args], env=environment, capture_output=True, text=True,
                              timeout=60)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [shlex.split(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


def deploy_call(stage: Path, name: str, yaml: str, network_config: str = NETWORK_CONFIG) -> list[str]:
    return ["nuctl", "deploy", "--project-name", "cvat", "--path", str(stage / name), "--file",
            str(stage / name / yaml), "--platform", "local", "--platform-config", network_config]


CREATE = ["nuctl", "create", "project", "cvat", "--platform", "local"]


def test_help_needs_no_tools(tmp_path) -> None:
    box = Sandbox(tmp_path, fakes=())
    result = box.run("--help")
    assert result.returncode == 0 and "Usage: ./deploy.sh" in result.stdout and "--weights" in result.stdout


@pytest.mark.parametrize("missing", ["nuctl", "docker"])
def test_missing_tools_are_reported(tmp_path, missing: str) -> None:
    box = Sandbox(tmp_path, fakes=tuple(t for t in ("nuctl", "docker") if t != missing))
    result = box.run("--weights", str(box.weights))
    assert result.returncode == 3 and f"'{missing}' not found" in result.stderr
    assert not any(call[0] == "nuctl" and call[1] in ("create", "deploy") for call in box.calls())


def test_unreachable_docker_daemon_is_reported(sandbox) -> None:
    result = sandbox.run("--weights", str(sandbox.weights), FAKE_DOCKER_INFO_RC="1")
    assert result.returncode == 3 and "Docker daemon" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--weights is required"),
        (("--weights",), "--weights needs a value"),
        (("--weights", "/nonexistent/w.pth"), "weights file not found"),
        (("--weights", "{w}", "--config", "/nonexistent.yaml"), "config file not found"),
        (("--weights", "{w}", "--bogus"), "unknown argument '--bogus'"),
        (("--weights", "{w}", "--config", "{based}"), "uses _BASE_ but is outside"),
    ],
)
def test_bad_arguments_exit_2_before_deploying(sandbox, args, message) -> None:
    based = sandbox.root / "based.yaml"
    based.write_text("_BASE_: other.yaml\n")
    args = tuple(a.format(w=sandbox.weights, based=based) for a in args)
    result = sandbox.run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not any(call[:2] == ["nuctl", "deploy"] for call in sandbox.calls())


@pytest.mark.parametrize(
    ("flags", "name", "yaml"),
    [
        ((), "mask2former-barrier", "function.yaml"),
        (("--gpu",), "mask2former-barrier", "function-gpu.yaml"),
        (("--interactor",), "mask2former-barrier-interactor", "function-interactor.yaml"),
        (("--interactor", "--gpu"), "mask2former-barrier-interactor", "function-interactor-gpu.yaml"),
    ],
)
def test_exact_commands_and_staged_context(sandbox, flags, name, yaml) -> None:
    result = sandbox.run(*flags, "--weights", str(sandbox.weights))
    assert result.returncode == 0, result.stderr
    assert sandbox.calls() == [["docker", "info"], CREATE, deploy_call(sandbox.stage, name, yaml)]
    assert "nuctl get function --platform local" in result.stdout
    context = sandbox.stage / name
    for staged in ("main.py", "model_handler.py", yaml, "requirements.txt", "requirements-cpu.txt",
                   "product/mask2former/predictor.py", "product/barrier_annotator/serving/handler.py",
                   "product/configs/" + TINY_REL.split("configs/", 1)[1]):
        assert (context / staged).is_file(), staged
    assert not list(context.rglob("__pycache__"))
    assert_only_what_the_function_imports(context / "product")
    assert [p.name for p in (context / "model" / "weights").iterdir()] == ["model_final.pth"]
    assert (context / "model" / "config.yaml").read_text() == f"_BASE_: /opt/nuclio/product/{TINY_REL}\n"


def assert_only_what_the_function_imports(product: Path) -> None:
    """The model and the CVAT side it serves: no training code, no sync loop, no commands."""
    assert sorted(p.name for p in product.iterdir()) == ["barrier_annotator", "configs", "mask2former"]
    assert sorted(p.name for p in (product / "barrier_annotator").iterdir()) == ["__init__.py", "cvat", "serving"]
    for path in product.rglob("*.py"):
        source = path.read_text()
        assert "barrier_annotator.training" not in source and "barrier_annotator.sync" not in source, path
        assert not re.search(r"^\s*(from|import) \.\.(training|sync|labelling|tools)\b", source, re.MULTILINE), path


def test_existing_project_is_fine_other_create_errors_are_not(sandbox) -> None:
    ok = sandbox.run("--weights", str(sandbox.weights), FAKE_CREATE_RC="1",
                     FAKE_CREATE_OUTPUT='Error - project "cvat" already exists')
    assert ok.returncode == 0, ok.stderr
    sandbox.log.unlink()
    failed = sandbox.run("--weights", str(sandbox.weights), FAKE_CREATE_RC="1", FAKE_CREATE_OUTPUT="boom")
    assert failed.returncode == 4 and "boom" in failed.stderr
    assert sandbox.calls() == [["docker", "info"], CREATE]


def test_failed_deploy_is_reported(sandbox) -> None:
    result = sandbox.run("--weights", str(sandbox.weights), FAKE_DEPLOY_RC="1")
    assert result.returncode == 4 and "nuctl deploy of mask2former-barrier failed" in result.stderr


def test_network_override_external_config_and_downloaded_weights(sandbox) -> None:
    config = sandbox.root / "flat.yaml"
    config.write_text("MODEL:\n  WEIGHTS: ''\n")
    downloaded = sandbox.root / "cache" / "model_final_86143f.pkl"
    downloaded.parent.mkdir()
    downloaded.write_bytes(b"zoo")
    result = sandbox.run("--weights=model_final_86143f.pkl", f"--config={config}",
                         BARRIER_NUCLIO_NETWORK="my_net", FAKE_DOWNLOADED=str(downloaded))
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    assert calls[0] == ["docker", "info"]
    assert calls[1][0] == "python" and "resolve_weights" in calls[1][2] and calls[1][-1] == "model_final_86143f.pkl"
    assert calls[-1] == deploy_call(sandbox.stage, "mask2former-barrier", "function.yaml",
                                    '{"attributes": {"network": "my_net"}}')
    context = sandbox.stage / "mask2former-barrier"
    assert (context / "model" / "config.yaml").read_text() == config.read_text()
    assert (context / "model" / "weights" / "model_final_86143f.pkl").read_bytes() == b"zoo"


def test_script_is_strict_bash() -> None:
    text = DEPLOY.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(DEPLOY, os.X_OK)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(DEPLOY)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
