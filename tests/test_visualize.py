"""Overlays and contact sheets (issue 16): drawing never fails, and labels stay inside the picture."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from barrier_annotator.contact_sheet import contact_sheet, resize_instances
from barrier_annotator.training.data.synthetic import CLASS_NAMES, render_scene
from barrier_annotator.visualize import draw_instances, instance_colors, render_overlay
from mask2former.structures import Instances

POST = CLASS_NAMES.index("vertical_post")


def _instances(masks: list[np.ndarray], classes: list[int], scores: list[float] | None = None) -> Instances:
    scores = scores if scores is not None else list(np.linspace(0.95, 0.4, len(masks)))
    return Instances.from_masks(np.stack(masks), scores, classes, CLASS_NAMES)


def _site(height: int, width: int, count: int, seed: int = 0) -> tuple[np.ndarray, Instances]:
    """A rendered site and ``count`` prediction-like instances: its true masks, then shifted copies."""
    scene = render_scene(np.random.default_rng(seed), height, width)
    rng = np.random.default_rng(seed)
    masks, classes = [], []
    while len(masks) < count:
        for part in scene.instances[: count - len(masks)]:
            dx, dy = (int(v) for v in rng.integers(-width // 50, width // 50 + 1, size=2)) if masks else (0, 0)
            shifted = cv2.warpAffine(part.mask.view(np.uint8), np.float32([[1, 0, dx], [0, 1, dy]]),
                                     (width, height), flags=cv2.INTER_NEAREST).view(bool)
            masks.append(shifted if len(masks) >= len(scene.instances) else part.mask)
            classes.append(part.class_id)
    return scene.image, _instances(masks, classes, sorted(rng.uniform(0.3, 1.0, count), reverse=True))


def _check_boxes(overlay, instances: Instances) -> None:
    """Every label / legend inside the picture, none over another, each painted where it says."""
    height, width = instances.image_size
    boxes = overlay.text_boxes
    for box in boxes:
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height, box
        assert tuple(overlay.image[box.y0, box.x0]) == box.color  # the box's background is drawn there
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0, (a, b)


@pytest.mark.parametrize("shape", [(1, 1), (3, 640), (3, 3), (640, 3), (2, 2000), (12, 12)])
def test_drawing_never_fails_on_tiny_frames(shape):
    height, width = shape
    image = np.full((height, width, 3), 90, np.uint8)
    whole = np.ones(shape, bool)
    half = np.zeros(shape, bool)
    half[:, : max(1, width // 2)] = True
    for instances in (_instances([whole, half, np.zeros(shape, bool)], [0, POST, 1]),
                      Instances.empty(shape, CLASS_NAMES)):
        overlay = render_overlay(image, instances)
        assert overlay.image.shape == (height, width, 3) and overlay.image.dtype == np.uint8
        _check_boxes(overlay, instances)
        assert draw_instances(image, instances).shape == image.shape
    assert (image == 90).all()  # the input is never drawn on


def test_48_megapixel_frame_costs_one_copy_of_the_frame():
    height, width = 6000, 8000
    image = np.zeros((height, width, 3), np.uint8)
    rail = np.zeros((height, width), bool)
    rail[2000:2300, 100:7900] = True
    post = np.zeros((height, width), bool)
    post[1500:5000, 3000:3250] = True
    instances = _instances([rail, post], [0, POST])
    tracemalloc.start()
    try:
        overlay = render_overlay(image, instances)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * image.nbytes, f"drawing took {peak / 2**20:.0f} MB for a {image.nbytes / 2**20:.0f} MB frame"
    assert overlay.image[2150, 1000].any() and overlay.image[4000, 3125].any()  # both tinted
    assert not overlay.image[100, 100].any()  # the rest untouched
    _check_boxes(overlay, instances)
    assert len(overlay.text_boxes) == 2 and all(b.height > 60 for b in overlay.text_boxes)  # scaled text


@pytest.mark.parametrize("size,count", [((180, 320), 19), ((180, 320), 64), ((1080, 1920), 17),
                                        ((1080, 1920), 64)])
def test_labels_stay_inside_apart_and_off_what_they_name(size, count):
    image, instances = _site(*size, count)
    overlay = render_overlay(image, instances)
    _check_boxes(overlay, instances)
    for box in overlay.text_boxes:
        if box.instance >= 0:
            mask = instances.masks[box.instance]
            hidden = mask[box.y0:box.y1, box.x0:box.x1].sum() / mask.sum()
            assert hidden <= 0.35, (box, hidden)


def test_names_on_large_frames_legend_on_tiny_ones():
    image, instances = _site(1080, 1920, 17)
    large = render_overlay(image, instances).text_boxes
    assert len(large) == 17 and all(box.text.startswith(name) for box, name in zip(
        sorted(large, key=lambda b: b.instance), instances.labels, strict=True))
    small_image, small = _site(180, 320, 19, seed=75)
    boxes = render_overlay(small_image, small).text_boxes
    legends = [box for box in boxes if box.swatches]
    assert len(legends) == 1 and set(small.labels) == set(legends[0].text.split())
    assert not any(name in box.text for box in boxes if not box.swatches for name in CLASS_NAMES)
    assert render_overlay(small_image, small, legend=False, show_scores=False).text_boxes == []


def test_label_goes_beside_a_bar_not_over_it():
    bar = np.zeros((200, 400), bool)
    bar[90:110, 20:380] = True
    instances = _instances([bar], [0])
    (label,) = render_overlay(np.zeros((200, 400, 3), np.uint8), instances).text_boxes
    assert label.text == "rail_top 0.95" and label.instance == 0
    assert label.y1 <= 90 or label.y0 >= 110  # above or below the rail, touching it
    assert min(abs(label.y1 - 90), abs(label.y0 - 110)) <= 2


def test_neighbouring_instances_of_a_class_look_different():
    image = np.full((100, 200, 3), 128, np.uint8)
    left, right = np.zeros((100, 200), bool), np.zeros((100, 200), bool)
    left[10:90, 40:100] = True
    right[10:90, 100:160] = True  # touching: one run of posts cut into two instances
    instances = _instances([left, right], [POST, POST])
    drawn = draw_instances(image, instances).astype(int)
    assert np.abs(drawn[50, 60] - drawn[50, 140]).sum() > 30
    assert len({tuple(c) for c in instance_colors(instances)}) == 2


def test_the_most_confident_instance_shows_on_top():
    image = np.zeros((50, 50, 3), np.uint8)
    big, small = np.zeros((50, 50), bool), np.zeros((50, 50), bool)
    big[5:45, 5:45] = True
    small[20:30, 20:30] = True
    colors = instance_colors(_instances([small, big], [1, 0]))
    drawn = draw_instances(image, _instances([small, big], [1, 0], [0.9, 0.5]))
    tint = drawn[25, 25].astype(int)
    assert np.argmax(tint) == np.argmax(colors[0]) and drawn[25, 25].any()


def test_resize_instances_keeps_thin_posts_and_boxes():
    post = np.zeros((1080, 1920), bool)
    post[100:900, 1000:1004] = True  # 4 px wide: 1.3 px at a third of the size
    small = resize_instances(_instances([post], [POST]), (360, 640))
    assert small.image_size == (360, 640) and small.masks[0].sum() > 0
    x0, y0, x1, y1 = small.boxes[0]
    assert abs(x0 - 333) <= 1 and abs(y0 - 33) <= 1 and x1 - x0 <= 3 and abs(y1 - 300) <= 1


def test_contact_sheet_puts_prediction_beside_truth():
    images, predictions, truths = [], [], []
    for seed, shape in ((1, (180, 320)), (2, (360, 640)), (3, (320, 240))):
        image, truth = _site(*shape, 6, seed=seed)
        images.append(image)
        truths.append(truth)
        predictions.append(truth.select(np.arange(len(truth) - 1)))
    sheet = contact_sheet(images, predictions, truths, captions=["a", "b", "c"], title="val", tile_width=300,
                          columns=3)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[1] >= 3 * 2 * 300 and sheet.shape[0] < 2 * 300  # one row of three pairs
    alone = contact_sheet(images, predictions, columns=1, tile_width=300)
    assert alone.shape[1] < 2 * 300 and alone.shape[0] > 3 * 169  # a column of single tiles
    with pytest.raises(ValueError, match="3 images"):
        contact_sheet(images, predictions[:2])
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([], [])


def test_contact_sheet_of_degenerate_images():
    images = [np.zeros((1, 1, 3), np.uint8), np.zeros((3, 500, 3), np.uint8), np.zeros((300, 2, 3), np.uint8)]
    predictions = [_instances([np.ones(image.shape[:2], bool)], [POST]) for image in images]
    empty = [Instances.empty(image.shape[:2], CLASS_NAMES) for image in images]
    sheet = contact_sheet(images, predictions, empty)
    assert sheet.ndim == 3 and sheet.shape[2] == 3


def test_a_mask_missed_by_every_probe_line_still_gets_a_label():
    # Two specks at opposite corners of their box: the columns and rows the label spots are taken
    # from (15, 50 and 85 % across the box) cross no mask pixel. A model's stray mask looks so.
    mask = np.zeros((120, 160), bool)
    mask[10:12, 10:12] = True
    mask[100:102, 140:142] = True
    instances = _instances([mask], [POST], [0.9])
    overlay = render_overlay(np.zeros((120, 160, 3), np.uint8), instances)
    _check_boxes(overlay, instances)
    assert draw_instances(np.zeros((120, 160, 3), np.uint8), instances).shape == (120, 160, 3)
