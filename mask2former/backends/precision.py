"""The precisions a runner may be asked for; each backend decides what ``auto`` means on its device."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; a clear error otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision
