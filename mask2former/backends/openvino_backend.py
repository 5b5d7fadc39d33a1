"""Runs the exported network with OpenVINO on CPU: one converted graph, compiled per padded size.

The network is converted once with dynamic batch/height/width (the model has no shape-derived
constants, so the graph is valid at every size) and cached on disk. Each padded input size gets
its own statically reshaped, compiled model (static shapes run much faster than a dynamic
compile), kept in a small LRU. OpenVINO's own compiled-model cache (``CACHE_DIR``) makes a
restart reuse those compilations.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hardware import available_cpus
from .openvino_runtime import import_openvino
from .precision import check_precision

logger = logging.getLogger(__name__)

_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


@functools.cache
def shared_core() -> Any:
    """One ``ov.Core`` for the process, never released. With a Core per model, a process that had
    dropped its Cores sometimes died of SIGSEGV on the next signal it got (Ctrl-C, a child's
    SIGCHLD; the core dump shows the fault while the kernel delivers it). The CPU plugin is the
    one library here that calls ``sigaltstack``; keeping it loaded made the crashes stop."""
    core = import_openvino().Core()
    from .openvino_fused_op import register

    register(core)  # saved graphs with the fused sampling operation can be read
    return core


def resolve_openvino_precision(precision: str, core: Any, device: str = "CPU") -> str:
    """``auto`` = bf16 where the CPU plugin reports bf16 support (AMX / AVX512-BF16), fp32 elsewhere."""
    check_precision(precision)
    capabilities = set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    if precision == "auto":
        return "bf16" if "BF16" in capabilities else "fp32"
    if precision in _CAPABILITY and _CAPABILITY[precision] not in capabilities:
        raise ValueError(f"{precision} requested but this {device} reports only {sorted(capabilities)}; "
                         "use fp32 or auto")
    return precision


def convert_network(model: torch.nn.Module, example_size: tuple[int, int] = (256, 320), *,
                    fused_sampling: bool = False) -> Any:
    """Trace the network (batch, 3, H, W) -> (pred_logits, pred_masks) into an OpenVINO model.

    ``fused_sampling``: the deformable sampling becomes the fused custom operation
    (``openvino_fused_op``, needs numba) instead of OpenVINO's GridSample graph.
    """
    ov = import_openvino()
    from ..modeling.meta_arch import ExportableMaskFormer
    from ..modeling.pixel_decoder.ms_deform_attn import sampling_mode

    extensions = []
    if fused_sampling:
        from .openvino_fused_op import conversion_extensions

        extensions = conversion_extensions()
    network = ExportableMaskFormer(model).eval()
    example = torch.zeros(1, 3, *example_size)
    with torch.no_grad(), sampling_mode("fused-op" if fused_sampling else "reference"):
        converted = ov.convert_model(network, example_input=example, input=[ov.PartialShape([-1, 3, -1, -1])],
                                     extension=extensions or None)
    converted.outputs[0].get_tensor().set_names({"pred_logits"})
    converted.outputs[1].get_tensor().set_names({"pred_masks"})
    return converted


class OpenVinoRunner:
    """``batch (B, 3, H, W)`` -> ``(pred_logits, pred_masks)`` as float32 torch tensors."""

    name = "openvino"

    def __init__(
        self,
        converted: Any,
        *,
        precision: str = "auto",
        threads: int | None = None,
        compiled_cache_dir: str | Path | None = None,
        max_compiled: int = 4,
    ) -> None:
        self.core = shared_core()
        self.compiled_cache_dir = str(compiled_cache_dir) if compiled_cache_dir else None
        self.precision = resolve_openvino_precision(precision, self.core)
        self.threads = threads or available_cpus()
        self.converted = converted
        from .openvino_fused_op import OP_TYPE

        self.fused_sampling = any(op.get_type_name() == OP_TYPE for op in converted.get_ops())
        self.max_compiled = max_compiled
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def compiled_for(self, shape: tuple[int, ...]) -> Any:
        """The compiled model for one input shape (reshaped statically), least recently used evicted."""
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return self._compiled[shape]
        model = self.converted.clone()
        model.reshape({model.inputs[0]: list(shape)})
        compiled = self.core.compile_model(model, "CPU", {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            **({"CACHE_DIR": self.compiled_cache_dir} if self.compiled_cache_dir else {}),
        })
        self._compiled[shape] = compiled
        if len(self._compiled) > self.max_compiled:
            self._compiled.popitem(last=False)
        logger.debug("compiled OpenVINO model for input %s", shape)
        return compiled

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        compiled = self.compiled_for(tuple(array.shape))
        request = compiled.create_infer_request()
        request.infer({0: array})
        logits = torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        masks = torch.from_numpy(np.array(request.get_output_tensor(1).data, dtype=np.float32))
        return logits, masks

    def describe(self) -> str:
        fused = ", fused sampling" if self.fused_sampling else ""
        return f"openvino {self.precision} on CPU ({self.threads} threads{fused})"
