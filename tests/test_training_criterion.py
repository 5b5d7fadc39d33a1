"""Mask2Former losses: hand-computed values, weighting, deep supervision, gradients, padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from barrier_annotator.training.criterion import SetCriterion, loss_weights, prepare_targets, total_loss
from barrier_annotator.training.matcher import HungarianMatcher

K = 4  # rail_top, rail_mid, toeboard, vertical_post


def _criterion(dec_layers: int = 3, num_points: int = 64) -> SetCriterion:
    weights = loss_weights(2.0, 5.0, 5.0, deep_supervision=True, dec_layers=dec_layers)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=num_points)
    return SetCriterion(K, matcher, weights, no_object_weight=0.1, num_points=num_points,
                        oversample_ratio=3.0, importance_sample_ratio=0.75)


def _outputs(batch: int, queries: int, size: int, aux: int, requires_grad: bool = False) -> dict:
    def one():
        return {"pred_logits": torch.randn(batch, queries, K + 1, requires_grad=requires_grad),
                "pred_masks": torch.randn(batch, queries, size, size, requires_grad=requires_grad)}
    out = one()
    out["aux_outputs"] = [one() for _ in range(aux)]
    return out


def _targets(counts: list[int], size: int) -> list[dict]:
    return [{"labels": torch.randint(0, K, (n,)), "masks": torch.rand(n, size, size) > 0.6} for n in counts]


def test_loss_weights_follow_dec_layers():
    weights = loss_weights(2.0, 5.0, 5.0, True, dec_layers=10)
    assert len(weights) == 3 * 10
    assert weights["loss_ce"] == 2.0 and weights["loss_mask_8"] == 5.0 and "loss_dice_9" not in weights
    assert len(loss_weights(2.0, 5.0, 5.0, False, dec_layers=10)) == 3


def test_hand_computed_losses_on_a_tiny_case():
    criterion = _criterion()
    # Two queries, one target of class 1. Query 0 predicts it; query 1 predicts "no object".
    logits = torch.tensor([[[0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]])
    pred_mask = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    outputs = {"pred_logits": logits, "pred_masks": torch.stack([pred_mask, -pred_mask])[None]}
    target_mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    targets = [{"labels": torch.tensor([1]), "masks": target_mask[None]}]
    indices = criterion.matcher(outputs, targets)
    assert [r.tolist() for r, _ in indices] == [[0]]

    ce = criterion.loss_labels(outputs, targets, indices)["loss_ce"].item()
    log_softmax = torch.log_softmax(logits[0], -1)
    expected_ce = (1.0 * -log_softmax[0, 1] + 0.1 * -log_softmax[1, 4]) / (1.0 + 0.1)
    assert ce == pytest.approx(expected_ce.item(), rel=1e-6)

    centres = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])
    masks = criterion.loss_masks(outputs, targets, indices, num_masks=1.0, point_coords=centres)
    xs, ts = [2.0, -1.0, 0.5, -3.0], [1.0, 0.0, 1.0, 0.0]
    ps = [1 / (1 + math.exp(-x)) for x in xs]
    bce = sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(ps, ts, strict=True)) / 4
    inter = sum(p * t for p, t in zip(ps, ts, strict=True))
    dice = 1 - (2 * inter + 1) / (sum(ps) + sum(ts) + 1)
    assert masks["loss_mask"].item() == pytest.approx(bce, rel=1e-6)
    assert masks["loss_dice"].item() == pytest.approx(dice, rel=1e-6)
    halved = criterion.loss_masks(outputs, targets, indices, num_masks=2.0, point_coords=centres)
    assert halved["loss_dice"].item() == pytest.approx(dice / 2, rel=1e-6)


def test_forward_keys_weights_finite_and_gradients():
    torch.manual_seed(0)
    criterion = _criterion(dec_layers=4)
    outputs = _outputs(batch=2, queries=6, size=8, aux=3, requires_grad=True)
    targets = _targets([2, 0], size=32)
    torch.manual_seed(1)
    weighted = criterion(outputs, targets)
    torch.manual_seed(1)
    raw = criterion.unweighted_losses(outputs, targets)
    assert set(weighted) == set(criterion.weight_dict) == set(raw)
    assert len(weighted) == 12
    for key, value in weighted.items():
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(raw[key].item() * criterion.weight_dict[key], rel=1e-5)
    total_loss(weighted).backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        assert out["pred_logits"].grad is not None and out["pred_logits"].grad.abs().sum() > 0
        assert out["pred_masks"].grad is not None and out["pred_masks"].grad.abs().sum() > 0


def test_batch_without_any_target_still_has_a_graph():
    criterion = _criterion()
    outputs = _outputs(batch=1, queries=4, size=8, aux=0, requires_grad=True)
    losses = criterion(outputs, _targets([0], size=32))
    assert losses["loss_mask"].item() == 0 and losses["loss_ce"].item() > 0
    total_loss(losses).backward()
    assert outputs["pred_masks"].grad is not None


def test_losses_decrease_when_optimised():
    torch.manual_seed(0)
    criterion = _criterion(num_points=256)
    outputs = _outputs(batch=2, queries=8, size=8, aux=2, requires_grad=True)
    params = [outputs["pred_logits"], outputs["pred_masks"]]
    params += [t for aux in outputs["aux_outputs"] for t in aux.values()]
    # Block-shaped targets (8x8 patterns upsampled x4) are representable by 8x8 predictions.
    targets = [{"labels": t["labels"], "masks": t["masks"][:, ::4, ::4].repeat_interleave(4, 1)
                .repeat_interleave(4, 2)} for t in _targets([3, 2], size=32)]
    optimizer = torch.optim.Adam(params, lr=0.3)
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = total_loss(criterion(outputs, targets))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.6 * history[0], history
    assert all(later < earlier for earlier, later in zip(history[::5], history[5::5], strict=False))


def test_prepare_targets_pads_and_canvas_is_checked():
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 20, 30, dtype=torch.bool)}]
    padded = prepare_targets(targets, (32, 32))
    assert padded[0]["masks"].shape == (1, 32, 32) and padded[0]["masks"].dtype == torch.bool
    assert padded[0]["masks"][0, :20, :30].all() and padded[0]["masks"][0, 20:].sum() == 0
    with pytest.raises(ValueError, match="larger than the padded"):
        prepare_targets(targets, (16, 32))
    with pytest.raises(ValueError, match="prepare_targets"):
        _criterion()(_outputs(1, 4, 8, 0), targets)


def test_empty_weight_comes_from_the_model_buffer():
    buffer = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.25])
    criterion = SetCriterion(K, HungarianMatcher(), {"loss_ce": 1.0}, empty_weight=buffer)
    assert criterion.empty_weight.tolist() == buffer.tolist()
    assert list(criterion.state_dict()) == ["empty_weight"]
    with pytest.raises(ValueError):
        SetCriterion(K, HungarianMatcher(), {}, empty_weight=torch.ones(3))


def test_num_masks_is_averaged_over_workers(tmp_path):
    criterion = _criterion()
    assert criterion.num_target_masks(_targets([0, 0], 8), torch.device("cpu")) == 1.0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert criterion.num_target_masks(_targets([3, 2], 8), torch.device("cpu")) == 5.0
    finally:
        dist.destroy_process_group()


def _tiny_batch():
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for height, width in ((96, 128), (80, 100)):
        image = torch.rand(3, height, width, generator=generator) * 255
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        masks[0, 10:40, 10:60] = True
        masks[1, 50:70, 20:90] = True
        image[:, masks[0]], image[:, masks[1]] = 250.0, 10.0
        images.append(image)
        targets.append({"labels": torch.tensor([0, 3]), "masks": masks})
    return images, targets


def _train_steps(model, criterion, optimizer, scheduler, clip, steps, first_seed=0):
    images, targets = _tiny_batch()
    history = []
    for step in range(steps):
        torch.manual_seed(first_seed + step)  # matcher / point sampling draw from the global RNG
        batch, _ = model.preprocess(images)
        losses = criterion(model(batch), prepare_targets(targets, tuple(batch.shape[-2:])))
        loss = total_loss(losses)
        optimizer.zero_grad()
        loss.backward()
        clip(optimizer)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
    return history


def _tiny_training(tiny_cfg):
    from barrier_annotator.training.solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
    from mask2former.config.build import build_model

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS = 1e-3, 0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    criterion = SetCriterion.from_config(cfg, empty_weight=model.criterion.empty_weight)
    optimizer = build_optimizer(cfg, model)
    return model, criterion, optimizer, build_lr_scheduler(cfg, optimizer), build_gradient_clipper(cfg)


def test_tiny_model_losses_finite_and_decreasing(tiny_cfg):
    model, criterion, optimizer, scheduler, clip = _tiny_training(tiny_cfg)
    assert criterion.empty_weight[-1].item() == pytest.approx(tiny_cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT)
    history = _train_steps(model, criterion, optimizer, scheduler, clip, steps=6)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.9 * history[0], history
    assert max(history[-2:]) < min(history[:2]), history


def test_tiny_model_resume_gives_the_same_next_step_loss(tiny_cfg, tmp_path):
    model, criterion, optimizer, scheduler, clip = _tiny_training(tiny_cfg)
    _train_steps(model, criterion, optimizer, scheduler, clip, steps=2)
    path = tmp_path / "model_0000001.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "iteration": 1}, path)
    expected = _train_steps(model, criterion, optimizer, scheduler, clip, steps=2, first_seed=2)

    model, criterion, optimizer, scheduler, clip = _tiny_training(tiny_cfg)
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    resumed = _train_steps(model, criterion, optimizer, scheduler, clip, steps=2, first_seed=2)
    assert resumed == expected


def test_without_deep_supervision_aux_outputs_are_ignored():
    weights = loss_weights(2.0, 5.0, 5.0, deep_supervision=False, dec_layers=4)
    criterion = SetCriterion(K, HungarianMatcher(2.0, 5.0, 5.0, num_points=64), weights, num_points=64)
    losses = criterion(_outputs(batch=1, queries=4, size=8, aux=3), _targets([2], size=32))
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
