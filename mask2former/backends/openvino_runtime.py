"""Importing OpenVINO the product's way (telemetry unreachable), and whether it is installed."""

from __future__ import annotations

import sys
from typing import Any


def import_openvino() -> Any:
    """Import OpenVINO with its usage telemetry unreachable.

    OpenVINO's model converter sends usage events to Google Analytics unless the user opted
    out; the product makes no network calls of its own. The converter falls back to a built-in
    no-op stub when ``openvino_telemetry`` cannot be imported, so we make that import fail.
    """
    if "openvino.tools.ovc" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError("the OpenVINO backend needs the 'openvino' extra: pip install -e '.[openvino]'") from error
    return openvino


def openvino_available() -> bool:
    try:
        import_openvino()
    except RuntimeError:
        return False
    return True
