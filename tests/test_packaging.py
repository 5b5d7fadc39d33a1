"""What installing the product puts into site-packages, and what the Nuclio image installs."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TINY_CONFIG

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
FUNCTION_DIR = REPO_ROOT / "functions" / "mask2former-barrier"
OURS = {"mask2former", "barrier_annotator"}


def pins(requirements: list[str]) -> dict[str, str]:
    """``{normalised name: version}`` of ``name==version`` lines (extras and comments ignored)."""
    found = {}
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line):
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def pyproject_pins() -> dict[str, str]:
    lists = [PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"].values()]
    return {name: version for requirements in lists for name, version in pins(requirements).items()}


def test_the_installed_distribution_owns_only_its_own_top_level_names() -> None:
    """Nothing generic like ``tools`` or ``training`` lands at the top of site-packages."""
    distribution = importlib.metadata.distribution("barrier-annotator")
    assert set((distribution.read_text("top_level.txt") or "").split()) == OURS
    owners = importlib.metadata.packages_distributions()
    assert {name for name, dists in owners.items() if "barrier-annotator" in dists} == OURS
    assert "tools" not in owners and "training" not in owners


def test_every_package_folder_is_installed() -> None:
    """The explicit package list (needed for the folder mapping) misses no sub-package."""
    folders = {"mask2former": "mask2former", "barrier_annotator": "barrier_annotator",
               "barrier_annotator.training": "training", "barrier_annotator.tools": "tools"}
    expected = set()
    for package, folder in folders.items():
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO_ROOT / folder).parts
            name = ".".join((package, *relative))
            if not any(name.startswith(f"{other}.") or name == other for other in folders if other != package
                       and other.startswith(f"{package}.")):
                expected.add(name)
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == expected
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapping == {"barrier_annotator.training": "training", "barrier_annotator.tools": "tools"}


@pytest.mark.slow
def test_a_wheel_holds_two_top_level_packages(tmp_path: Path) -> None:
    """A regular (not editable) install: the wheel's files live under our two names only."""
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "output*", "demo_output", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("barrier_annotator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == OURS
    assert "barrier_annotator/training/engine.py" in names and "barrier_annotator/tools/predict.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "barrier-train = barrier_annotator.training.train_net:main" in scripts


def test_function_requirements_pin_what_pyproject_pins() -> None:
    declared = pyproject_pins()
    for name in ("requirements.txt", "requirements-cpu.txt"):
        lines = (FUNCTION_DIR / name).read_text().splitlines()
        for package, version in pins(lines).items():
            assert declared.get(package) == version, f"{name}: {package}=={version}, pyproject {declared.get(package)}"


FUNCTION_IMPORTS = f"""
import base64, io, json, sys, importlib.metadata as md
import numpy as np
from PIL import Image
sys.path.insert(0, {str(FUNCTION_DIR)!r})
import model_handler
from barrier_annotator.serving import ModelHandler
handler = ModelHandler.from_files({str(TINY_CONFIG)!r}, None, device="cpu", opts=["MODEL.WEIGHTS", ""])
frame = io.BytesIO()
Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frame, format="PNG")
image = base64.b64encode(frame.getvalue()).decode()
assert handler.handle({{"image": image, "threshold": 0.0}}).status == 200
assert handler.handle({{"image": image, "pos_points": [[3.5, 4.5]], "obj_bbox": []}}, "interactor").status == 200
owners = md.packages_distributions()
print(json.dumps({{"modules": sorted(m for m in sys.modules if m.startswith("barrier_annotator")),
                  "distributions": sorted({{d for m in list(sys.modules) for d in owners.get(m.split(".")[0], [])}})}}))
"""


def test_the_function_imports_only_what_its_image_installs() -> None:
    """The detector and the interactor, run as a worker runs them: no training, sync, labelling or
    command code is imported, and every distribution they import is in requirements-cpu.txt (or is
    one of torch's and fvcore's own dependencies, or optional in numba)."""
    result = subprocess.run([sys.executable, "-c", FUNCTION_IMPORTS], capture_output=True, text=True, timeout=300,
                            check=True, cwd=REPO_ROOT)
    report = json.loads(result.stdout.splitlines()[-1])
    assert all(m.split(".")[1] in ("cvat", "serving") for m in report["modules"] if m != "barrier_annotator")
    requirements = (FUNCTION_DIR / "requirements.txt").read_text().splitlines() + \
        (FUNCTION_DIR / "requirements-cpu.txt").read_text().splitlines()
    installed = set(pins(requirements))
    dependencies_of_those = {"iopath", "yacs", "portalocker", "typing-extensions", "sympy", "mpmath", "packaging",
                             "setuptools", "openvino-telemetry", "filelock", "jinja2", "markupsafe", "networkx",
                             "fsspec", "tabulate", "termcolor", "scipy"}
    used = {re.sub(r"[-_.]+", "-", name).lower() for name in report["distributions"]} - {"barrier-annotator"}
    assert used - installed - dependencies_of_those == set()
    assert "cvat-sdk" not in used and "pycocotools" in installed
