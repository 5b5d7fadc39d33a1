"""The Nuclio function files: what CVAT reads from them (parsed the way CVAT parses them), the
handler and paths they name, and the exact differences between the CPU and GPU builds."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import yaml

from barrier_annotator.tools.serve_function import load_function_module
from mask2former.config import load_config
from mask2former.config.class_names import class_names_for
from tests.conftest import REPO_ROOT, SWIN_L_CONFIG, SWIN_T_CONFIG

FUNCTION_DIR = REPO_ROOT / "functions" / "mask2former-barrier"
FILES = ("function.yaml", "function-gpu.yaml", "function-interactor.yaml", "function-interactor-gpu.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((FUNCTION_DIR / name).read_text())


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """``{"spec.build.baseImage": ..., "spec.env[BARRIER_DEVICE]": ...}``: lists of named items by name."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list):
        out = {}
        for index, item in enumerate(node):
            key = item.get("name") if isinstance(item, dict) and "name" in item else index
            out.update(flatten(item, f"{prefix}[{key}]"))
        return out
    return {prefix: node}


def directives(config: dict, stage: str) -> list[str]:
    return [f"{d['kind']} {d['value']}" for d in config["spec"]["build"]["directives"][stage]]


@pytest.mark.parametrize("name", FILES)
def test_common_keys_cvat_and_nuclio_need(name: str) -> None:
    config = load(name)
    meta, spec = config["metadata"], config["spec"]
    assert meta["namespace"] == "cvat"
    assert meta["name"] == ("mask2former-barrier-interactor" if "interactor" in name else "mask2former-barrier")
    assert spec["handler"] == "main:handler" and spec["runtime"] == "python:3.11"
    assert spec["description"]  # CVAT reads spec.description unconditionally
    trigger = spec["triggers"]["myHttpTrigger"]
    assert trigger["kind"] == "http"
    assert trigger["attributes"]["maxRequestBodySize"] >= 33554432
    assert trigger["workerAvailabilityTimeoutMilliseconds"] == 10000
    assert spec["platform"]["attributes"] == {"restartPolicy": {"name": "always", "maximumRetryCount": 3},
                                              "mountMode": "volume"}
    timeout = int(re.fullmatch(r"(\d+)s", spec["eventTimeout"]).group(1))
    assert timeout == (30 if "gpu" in name else 120)  # 120 s is also CVAT's own request timeout
    env = {item["name"]: item["value"] for item in spec["env"]}
    assert env["BARRIER_FUNCTION_KIND"] == ("interactor" if "interactor" in name else "detector")
    assert env["BARRIER_CONFIG"] == "/opt/nuclio/model/config.yaml"  # where deploy.sh stages them
    assert env["BARRIER_WEIGHTS"] == "/opt/nuclio/model/weights"
    assert env["BARRIER_BACKEND"] in ("auto", "torch", "openvino")
    post = " ".join(directives(config, "postCopy"))
    # the function's requirements are installed and its staged source imported; weights are not fetched
    assert "-r /opt/nuclio/requirements" in post
    assert "ENV PYTHONPATH=/opt/nuclio/product" in directives(config, "preCopy")
    assert "http" not in post.replace("https://download.pytorch.org/whl/", "")


@pytest.mark.parametrize("name", ["function.yaml", "function-gpu.yaml"])
def test_detector_spec_is_the_models_classes_in_order(name: str) -> None:
    annotations = load(name)["metadata"]["annotations"]
    assert annotations["type"] == "detector"
    # CVAT json.loads every function's spec to list them: one that does not load makes
    # GET /api/lambda/functions a 500 for all functions (an unknown type only hides this one)
    labels = json.loads(annotations["spec"])
    for config_file in (SWIN_T_CONFIG, SWIN_L_CONFIG):
        assert [label["name"] for label in labels] == list(class_names_for(load_config(config_file)))
    assert [label["id"] for label in labels] == [0, 1, 2, 3]
    assert {label["type"] for label in labels} == {"mask"}


@pytest.mark.parametrize("name", ["function-interactor.yaml", "function-interactor-gpu.yaml"])
def test_interactor_annotations_as_cvat_reads_them(name: str) -> None:
    meta = {key: str(value) for key, value in load(name)["metadata"]["annotations"].items()}  # Nuclio: strings
    assert meta["type"] == "interactor"
    assert json.loads(meta.get("spec") or "[]") == []
    # the very expressions of CVAT's LambdaFunction
    assert int(meta.get("version", "1")) == 2
    assert int(meta.get("min_pos_points", 1)) == 1
    assert int(meta.get("min_neg_points", -1)) == 0
    assert bool(meta.get("startswith_box", False)) is False
    assert bool(meta.get("startswith_box_optional", False)) is True
    assert meta.get("help_message", "")


def test_cpu_and_gpu_files_differ_exactly_where_they_should() -> None:
    for cpu_name, gpu_name in (("function.yaml", "function-gpu.yaml"),
                               ("function-interactor.yaml", "function-interactor-gpu.yaml")):
        cpu, gpu = load(cpu_name), load(gpu_name)
        flat_cpu, flat_gpu = flatten(cpu), flatten(gpu)
        for flat in (flat_cpu, flat_gpu):
            for key in [k for k in flat if k.startswith("spec.build.directives")]:
                del flat[key]  # compared below, as command lists
        differing = {key for key in flat_cpu.keys() | flat_gpu.keys() if flat_cpu.get(key) != flat_gpu.get(key)}
        assert differing == {
            "spec.eventTimeout",
            "spec.env[BARRIER_DEVICE].value",
            "spec.env[BARRIER_BACKEND].value",
            "spec.build.image",
            "spec.build.baseImage",
            "spec.triggers.myHttpTrigger.numWorkers",
            "spec.resources.limits.nvidia.com/gpu",
        }
        assert flat_cpu["spec.build.baseImage"] == "python:3.11-slim"
        assert flat_gpu["spec.build.baseImage"].startswith("nvidia/cuda:")
        assert flat_gpu["spec.build.image"] == flat_cpu["spec.build.image"].replace(":latest", ":latest-gpu")
        workers = "spec.triggers.myHttpTrigger.numWorkers"
        assert (flat_cpu[workers], flat_gpu[workers]) == (2, 1)
        assert "resources" not in cpu["spec"] and gpu["spec"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert (flat_cpu["spec.env[BARRIER_DEVICE].value"], flat_gpu["spec.env[BARRIER_DEVICE].value"]) \
            == ("cpu", "cuda")
        cpu_pre, gpu_pre = directives(cpu, "preCopy"), directives(gpu, "preCopy")
        for line in ("ENV NVIDIA_VISIBLE_DEVICES=all", "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility"):
            assert line in gpu_pre and line not in cpu_pre
        assert any("python3.11" in line for line in gpu_pre)
        cpu_post, gpu_post = " ".join(directives(cpu, "postCopy")), " ".join(directives(gpu, "postCopy"))
        assert "whl/cpu" in cpu_post and "requirements-cpu.txt" in cpu_post and "--prepare" in cpu_post
        assert "whl/cu" in gpu_post and "-r /opt/nuclio/requirements.txt" in gpu_post and "prepare" not in gpu_post


def test_cpu_build_prepares_openvino_into_the_runtime_cache() -> None:
    """The build step runs model_handler.py, which reads the runtime's variables with defaults (spec.env
    is not set while the image builds): the defaults must be the yaml's values, or the build would
    warm another model than the one a worker loads."""
    handler = runpy.run_path(str(FUNCTION_DIR / "model_handler.py"), run_name="model_handler")
    for name in ("function.yaml", "function-interactor.yaml"):
        config = load(name)
        pre = directives(config, "preCopy")
        assert "ENV BARRIER_OV_CACHE=/opt/nuclio/model/openvino-cache" in pre
        assert "ENV NUMBA_CACHE_DIR=/opt/nuclio/model/numba-cache" in pre
        (prepare,) = [line for line in directives(config, "postCopy") if "--prepare" in line]
        assert prepare == "RUN python /opt/nuclio/model_handler.py --prepare 800x1344 1344x800"
        env = {item["name"]: item["value"] for item in config["spec"]["env"]}
        assert env["BARRIER_CONFIG"] == handler["DEFAULT_CONFIG"]
        assert env["BARRIER_WEIGHTS"] == handler["DEFAULT_WEIGHTS"]
        assert env["BARRIER_BACKEND"] == "auto" and env["BARRIER_DEVICE"] == "cpu"


def test_detector_and_interactor_share_the_build() -> None:
    for cpu_or_gpu in ("", "-gpu"):
        detector, interactor = load(f"function{cpu_or_gpu}.yaml"), load(f"function-interactor{cpu_or_gpu}.yaml")
        assert detector["spec"]["build"]["directives"] == interactor["spec"]["build"]["directives"]
        assert detector["spec"]["build"]["baseImage"] == interactor["spec"]["build"]["baseImage"]


def test_handler_named_in_the_files_exists() -> None:
    module = load_function_module(FUNCTION_DIR)
    assert callable(module.handler) and callable(module.init_context)
    assert (FUNCTION_DIR / "model_handler.py").is_file()
    assert len((FUNCTION_DIR / "main.py").read_text().splitlines()) <= 40


def test_nothing_imports_from_functions_or_tools() -> None:
    for package in ("mask2former", "barrier_annotator", "training"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*(from|import)\s+(barrier_annotator\.tools|tools|functions)\b", text,
                                 re.MULTILINE), path


def test_files_name_existing_paths() -> None:
    assert Path(REPO_ROOT / "deploy.sh").is_file()
    for name in FILES:
        assert (FUNCTION_DIR / name).is_file()
