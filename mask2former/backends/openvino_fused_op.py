"""The fused deformable sampling as an OpenVINO custom operation (Python, running the numba kernel).

Why an operation and not a graph split into compiled segments around the six samplings: the
model stays one converted graph (one cache entry, one compile per input size, one infer call),
OpenVINO keeps fusing and scheduling everything around the sampling, and the operation is the
same kernel the torch backend calls. The CPU plugin runs an operation it does not know through
its ``evaluate`` (a reference node), on plain fp32 buffers even under a bf16 precision hint; the
operation reads them in place and writes its output in place.

The conversion (``conversion_extensions``) replaces each ``FusedSamplingBoundary`` module of the
traced model with this operation; a saved graph holding it is read back after
``register(core)``. Inputs: value ``(N, S, heads, D)``, level shapes ``(L, 2)`` int64 (computed in
the graph from the feature sizes, so one graph serves every input size), reference points
``(1 or N, Lq, 2)``, offsets ``(N, Lq, heads, L, P, 2)``, weights ``(N, Lq, heads, L, P)``; output
``(N, Lq, heads * D)`` float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..modeling.pixel_decoder.fused_sampling import run_kernel
from ..modeling.pixel_decoder.ms_deform_attn import FusedSamplingBoundary
from .openvino_runtime import import_openvino

ov = import_openvino()

_TRACE_NAME = "BarrierFusedDeformableSample"  # the traced node the conversion extension maps


def _float32(tensor: Any) -> np.ndarray:
    """An input buffer as float32: the plugin hands f32 (also under a bf16 hint); bf16/f16 are
    widened (bf16 is the top half of an f32)."""
    kind = tensor.get_element_type().get_type_name()
    data = tensor.data
    if kind == "bf16":
        return (np.asarray(data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


class FusedDeformableSampleOp(ov.Op):
    """``deformable_sample`` in one operation: see the module docstring. OpenVINO names a Python
    operation after its class (version "extension"): the saved graph refers to it by that name."""

    def __init__(self, inputs: list | None = None) -> None:
        super().__init__(self, inputs)

    def validate_and_infer_types(self) -> None:
        value, offsets = self.get_input_partial_shape(0), self.get_input_partial_shape(3)
        if value.rank.is_static and value.rank.get_length() == 4 and offsets.rank.is_static:
            static = value[2].is_static and value[3].is_static
            channels = ov.Dimension(value[2].get_length() * value[3].get_length()) if static else ov.Dimension()
            shape = ov.PartialShape([value[0], offsets[1], channels])
        else:
            shape = ov.PartialShape.dynamic(3)
        self.set_output_type(0, ov.Type.f32, shape)

    def clone_with_new_inputs(self, new_inputs: list) -> FusedDeformableSampleOp:
        return FusedDeformableSampleOp(new_inputs)

    def visit_attributes(self, visitor: Any) -> bool:
        return True  # no attributes: everything, sizes included, is an input

    def has_evaluate(self) -> bool:
        return True

    def evaluate(self, outputs: Any, inputs: Any) -> bool:
        value = _float32(inputs[0])
        level_shapes = np.asarray(inputs[1].data, dtype=np.int64)
        offsets = _float32(inputs[3])
        batch, _, heads, head_dim = value.shape
        queries = offsets.shape[1]
        expected = [batch, queries, heads * head_dim]
        if list(outputs[0].shape) != expected:
            outputs[0].shape = expected
        out = outputs[0].data
        if out.dtype != np.float32 or not out.flags.c_contiguous:  # pragma: no cover - the output is f32 by type
            raise RuntimeError(f"{OP_TYPE}: unexpected output buffer {out.dtype}")
        run_kernel(value, level_shapes, _float32(inputs[2]), offsets, _float32(inputs[4]),
                   out.reshape(batch, queries, heads, head_dim))
        return True


OP_TYPE = FusedDeformableSampleOp.__name__


def conversion_extensions() -> list:
    """For ``ov.convert_model``: each ``FusedSamplingBoundary`` becomes one ``FusedDeformableSampleOp``."""
    from openvino.frontend.pytorch import ConversionExtension, ModuleExtension

    def convert(node: Any) -> list:
        return FusedDeformableSampleOp([node.get_input(i) for i in range(node.get_input_size())]).outputs()

    return [ModuleExtension(FusedSamplingBoundary, _TRACE_NAME), ConversionExtension(_TRACE_NAME, convert)]


def register(core: Any) -> None:
    """Let ``core`` read (and compile) saved graphs that hold the operation."""
    core.add_extension(FusedDeformableSampleOp)
