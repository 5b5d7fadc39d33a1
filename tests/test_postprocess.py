"""Post-processing on CPU runs on one intra-op thread (steady time, whatever the other core does)."""

from __future__ import annotations

import torch

from mask2former import postprocess
from mask2former.postprocess import ResizeGeometry, instances_from_outputs


def test_cpu_postprocessing_runs_on_one_thread_and_restores_the_count(monkeypatch):
    seen = []
    windows = postprocess.masks_in_windows

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        yield from windows(*args, **kwargs)

    monkeypatch.setattr(postprocess, "masks_in_windows", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        logits = torch.full((5, 3), -4.0)
        logits[:2, 0] = 4.0
        masks = torch.full((5, 8, 10), -3.0)
        masks[:, 2:5, 3:7] = 3.0
        result = instances_from_outputs(logits, masks, ResizeGeometry((30, 37), (32, 40), (45, 55)), ["a", "b"],
                                        score_threshold=0.5, top_k=5)
        assert len(result) == 2 and result.masks.any()
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
