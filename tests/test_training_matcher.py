"""Hungarian matcher: cost definition, optimality against brute force, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from barrier_annotator.training.matcher import HungarianMatcher
from barrier_annotator.training.point_sampling import point_sample, uncertain_point_coords_with_randomness


def _pixel_centres(height: int, width: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=1).float()


def _naive_cost(logits, pred_masks, labels, masks, weights):
    """Cost of each (query, target) pair written out pair by pair on every pixel."""
    w_class, w_mask, w_dice = weights
    probs = torch.softmax(logits.double(), -1)
    cost = torch.zeros(len(logits), len(labels), dtype=torch.float64)
    for q in range(len(logits)):
        x = pred_masks[q].double().flatten()
        p = torch.sigmoid(x)
        for m in range(len(labels)):
            t = masks[m].double().flatten()
            bce = sum(-(ti * math.log(pi) + (1 - ti) * math.log(1 - pi))
                      for pi, ti in zip(p.tolist(), t.tolist(), strict=True)) / len(t)
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[q, m] = -w_class * probs[q, labels[m]] + w_mask * bce + w_dice * dice
    return cost


def test_point_sample_at_pixel_centres_returns_pixels():
    features = torch.randn(2, 3, 5, 7)
    coords = _pixel_centres(5, 7).expand(2, -1, -1)
    sampled = point_sample(features, coords)
    assert sampled.shape == (2, 3, 35)
    torch.testing.assert_close(sampled, features.flatten(2))


def test_importance_sampling_prefers_uncertain_points():
    # Logits are 0 (most uncertain) only in the left column half, large elsewhere.
    logits = torch.full((1, 1, 16, 16), 20.0)
    logits[..., :8] = 0.0
    torch.manual_seed(0)
    coords = uncertain_point_coords_with_randomness(logits, lambda x: -x.abs(), 100, 3.0, 0.75)
    assert coords.shape == (1, 100, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    # The 75 importance points come first; almost all lie in the uncertain half (x < 0.5).
    assert (coords[0, :75, 0] < 0.5).float().mean() > 0.9


def test_cost_matrix_matches_pairwise_definition():
    torch.manual_seed(1)
    q, m, k, size = 4, 3, 4, 6
    logits = torch.randn(q, k + 1)
    pred_masks = torch.randn(q, size, size)
    labels = torch.tensor([0, 3, 3])
    masks = torch.rand(m, size, size) > 0.5
    weights = (2.0, 5.0, 5.0)
    matcher = HungarianMatcher(*weights, num_points=size * size)
    cost = matcher.cost_matrix(logits, pred_masks, labels, masks, point_coords=_pixel_centres(size, size))
    torch.testing.assert_close(cost.double(), _naive_cost(logits, pred_masks, labels, masks, weights),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_assignment_is_optimal_against_brute_force(seed: int):
    generator = torch.Generator().manual_seed(seed)
    num_queries = 5
    num_targets = int(torch.randint(1, num_queries + 1, (1,), generator=generator))
    outputs = {"pred_logits": torch.randn(1, num_queries, 5, generator=generator),
               "pred_masks": torch.randn(1, num_queries, 8, 8, generator=generator)}
    targets = [{"labels": torch.randint(0, 4, (num_targets,), generator=generator),
                "masks": torch.rand(num_targets, 32, 32, generator=generator) > 0.5}]
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=50)

    torch.manual_seed(100 + seed)
    (rows, cols), = matcher(outputs, targets)
    # Re-draw the same random points the matcher used to get its cost matrix.
    torch.manual_seed(100 + seed)
    coords = torch.rand(50, 2)
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0],
                               targets[0]["labels"], targets[0]["masks"], point_coords=coords)

    assert len(rows) == len(cols) == num_targets
    assert sorted(cols.tolist()) == list(range(num_targets))
    assert len(set(rows.tolist())) == num_targets
    found = cost[rows, cols].sum().item()
    best = min(sum(cost[query, target].item() for target, query in enumerate(perm))
               for perm in itertools.permutations(range(num_queries), num_targets))
    assert found == pytest.approx(best, abs=1e-5)


def test_batch_with_an_image_without_targets():
    torch.manual_seed(3)
    outputs = {"pred_logits": torch.randn(2, 6, 5), "pred_masks": torch.randn(2, 6, 8, 8)}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 32, 32, dtype=torch.bool)},
               {"labels": torch.tensor([1, 2]), "masks": torch.rand(2, 32, 32) > 0.5}]
    indices = HungarianMatcher(2.0, 5.0, 5.0, num_points=64)(outputs, targets)
    assert [len(rows) for rows, _ in indices] == [0, 2]
    assert all(r.dtype == torch.int64 and c.dtype == torch.int64 for r, c in indices)


def test_non_finite_outputs_are_reported():
    outputs = {"pred_logits": torch.full((1, 3, 5), float("nan")), "pred_masks": torch.randn(1, 3, 8, 8)}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)}]
    with pytest.raises(FloatingPointError):
        HungarianMatcher(num_points=16)(outputs, targets)
