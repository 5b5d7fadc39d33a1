"""Synthetic guardrail generator: determinism, mask correctness, COCO/CVAT output, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from barrier_annotator.training.data.synthetic import (
    CLASS_NAMES,
    encode_segmentation,
    generate_dataset,
    image_shape,
    render_sample,
    render_scene,
)
from barrier_annotator.training.data.synthetic_backdrop import add_occluders
from barrier_annotator.training.data.synthetic_paint import fill_polygon, polygon_mask

REPO_ROOT = Path(__file__).resolve().parents[1]
# pycocotools 2.0.x decoding under numpy 2 warns on every call; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")


def _scenes(count: int, height: int = 240, width: int = 320, seed: int = 0):
    return [render_scene(np.random.default_rng([seed, 99, i]), height, width) for i in range(count)]


@pytest.fixture(scope="module")
def scenes():
    return _scenes(16)


def _same_scene(a, b) -> bool:
    return (np.array_equal(a.image, b.image) and len(a.instances) == len(b.instances)
            and all(x.class_id == y.class_id and np.array_equal(x.mask, y.mask)
                    for x, y in zip(a.instances, b.instances, strict=True)))


def test_class_names_are_the_model_order():
    assert CLASS_NAMES == ("rail_top", "rail_mid", "toeboard", "vertical_post")


def test_render_is_deterministic_and_seed_dependent():
    first = render_scene(np.random.default_rng([3, 0, 5]), 240, 320)
    again = render_scene(np.random.default_rng([3, 0, 5]), 240, 320)
    other = render_scene(np.random.default_rng([3, 0, 6]), 240, 320)
    assert _same_scene(first, again)
    assert not np.array_equal(first.image, other.image)


def test_sample_does_not_depend_on_generation_order():
    forward = [render_sample(11, "val", i, 160) for i in range(4)]
    backward = [render_sample(11, "val", i, 160) for i in reversed(range(4))][::-1]
    assert all(_same_scene(a, b) for a, b in zip(forward, backward, strict=True))
    assert not np.array_equal(render_sample(11, "train", 0, 160).image, forward[0].image)


def test_masks_are_visible_disjoint_and_cover_every_class(scenes):
    seen = set()
    for scene in scenes:
        assert scene.image.shape == (240, 320, 3) and scene.image.dtype == np.uint8
        assert scene.instances, "every scene should hold at least one visible barrier part"
        stack = np.stack([inst.mask for inst in scene.instances])
        assert stack.dtype == bool and stack.shape[1:] == (240, 320)
        assert stack.sum(axis=(1, 2)).min() >= 20, "tiny instances must be dropped"
        assert stack.sum(axis=0).max() == 1, "visible masks never overlap"
        for inst in scene.instances:
            assert CLASS_NAMES[inst.class_id] == inst.class_name
            seen.add(inst.class_name)
    assert seen == set(CLASS_NAMES)


def test_parts_are_ordered_and_thick_enough(scenes):
    """Top rail above mid rail above toeboard in each run; thin parts stay >= ~5 px at 320 px."""
    thickness = {name: [] for name in CLASS_NAMES}
    checked = 0
    for scene in scenes:
        by_run: dict[tuple[int, int], np.ndarray] = {}
        for inst in scene.instances:
            axis = 1 if inst.class_name == "vertical_post" else 0
            runs = inst.mask.sum(axis=axis)
            thickness[inst.class_name].append(float(np.median(runs[runs > 0])))
            key = (inst.run, inst.class_id)
            by_run[key] = by_run.get(key, np.zeros_like(inst.mask)) | inst.mask
        rows = np.arange(scene.image.shape[0])[:, None]

        def mean_row(mask, shared, rows=rows):
            return ((mask * rows).sum(0)[shared] / mask.sum(0)[shared]).mean()

        for (run, upper), (run2, lower) in [(a, b) for a in by_run for b in by_run]:
            if run != run2 or not upper < lower <= 2:
                continue
            shared = by_run[(run, upper)].any(0) & by_run[(run, lower)].any(0)
            if shared.sum() < 5:
                continue
            assert mean_row(by_run[(run, upper)], shared) < mean_row(by_run[(run, lower)], shared)
            checked += 1
    assert checked >= 10
    median = {name: np.median(values) for name, values in thickness.items()}
    assert median["rail_top"] >= 5.5 and median["rail_mid"] >= 5.5 and median["vertical_post"] >= 5
    assert median["toeboard"] > 1.4 * max(median["rail_top"], median["rail_mid"])
    assert np.percentile(thickness["rail_top"] + thickness["rail_mid"], 10) >= 5.5


def test_image_shapes_are_camera_like():
    shapes = [image_shape(np.random.default_rng(i), 320) for i in range(200)]
    assert set(shapes) == {(240, 320), (180, 320), (213, 320), (320, 240)}
    assert sum(h < w for h, w in shapes) > 0.8 * len(shapes), "portrait only rarely"


def test_fill_polygon_stamps_exact_mask_and_soft_edges():
    canvas = np.zeros((40, 50, 3), np.float32)
    labels = np.zeros((40, 50), np.int32)
    poly = np.array([[5.3, 4.7], [44.2, 9.1], [40.6, 30.4], [8.8, 25.5]])
    fill_polygon(canvas, poly, (200.0, 100.0, 50.0), labels=labels, label_value=7)
    inside = polygon_mask(labels.shape, poly)
    assert np.array_equal(labels == 7, inside) and inside.sum() > 500
    core = cv2.erode(inside.astype(np.uint8), np.ones((3, 3))) > 0
    assert np.allclose(canvas[core], (200, 100, 50))
    edge = (canvas[..., 0] > 0) & (canvas[..., 0] < 199)
    assert edge.sum() > 40, "image edges are anti-aliased"
    assert not canvas[~cv2.dilate(inside.astype(np.uint8), np.ones((5, 5))).astype(bool)].any()


def test_occluders_hide_what_they_cover():
    """Pixels an occluder paints opaquely leave the masks; barrier pixels it leaves alone stay."""
    occluded = 0
    for seed in range(12):
        labels = np.zeros((240, 320), np.int32)
        labels[100:140] = 1
        dark, bright = np.zeros((240, 320, 3), np.float32), np.full((240, 320, 3), 255, np.float32)
        after_dark, after_bright = labels.copy(), labels.copy()
        add_occluders(np.random.default_rng(seed), dark, after_dark, 1.0)
        add_occluders(np.random.default_rng(seed), bright, after_bright, 1.0)
        assert np.array_equal(after_dark, after_bright)
        coverage = 1 - (bright - dark).min(axis=2) / 255  # occluder opacity per pixel
        band = labels == 1
        assert (after_dark[band & (coverage > 0.99)] == 0).all()
        assert (after_dark[band & (coverage < 0.01)] == 1).all()
        assert (after_dark[band] == 0).mean() <= 0.35, "occlusion stays partial"
        occluded += bool((after_dark[band] == 0).any())
    assert occluded >= 4


@pytest.mark.parametrize(("height", "width"), [(97, 333), (333, 97), (1080, 1920)])
def test_odd_and_large_sizes(height, width):
    scene = render_scene(np.random.default_rng(4), height, width)
    assert scene.image.shape == (height, width, 3)
    for inst in scene.instances:
        assert inst.mask.shape == (height, width) and inst.mask.any()


def test_too_small_image_is_refused():
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), 8, 8)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same small dataset in each mask style (320 px, as used for training)."""
    root = tmp_path_factory.mktemp("synthetic")
    return {style: generate_dataset(root / style, num_train=3, num_val=2, seed=5, coco_mask_style=style,
                                    progress=False)
            for style in ("rle", "polygon", "cvat")}


@pytest.mark.parametrize("style", ["rle", "polygon", "cvat"])
def test_coco_annotations_match_rendered_masks(datasets, style):
    paths = datasets[style]
    for split, count in (("train", 3), ("val", 2)):
        coco = COCO(str(paths.annotations[split]))
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(CLASS_NAMES)
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
        assert len(coco.getImgIds()) == count
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            scene = render_sample(5, split, image_id - 1, 320)
            assert (info["height"], info["width"]) == scene.image.shape[:2]
            assert max(info["height"], info["width"]) == 320
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
            assert len(anns) == len(scene.instances)
            for ann, inst in zip(anns, scene.instances, strict=True):
                assert ann["category_id"] == inst.class_id + 1
                assert ann["iscrowd"] == (1 if style == "cvat" else 0)
                mask = inst.mask
                decoded = coco.annToMask(ann).astype(bool)
                if style == "polygon":  # outer contours only: identical unless an occluder made a hole
                    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
                    assert (decoded & mask).sum() == mask.sum() and (decoded | mask).sum() < 1.1 * mask.sum()
                else:
                    assert np.array_equal(decoded, mask)
                ys, xs = np.nonzero(mask)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                assert ann["area"] == mask.sum()
            jpeg = cv2.cvtColor(cv2.imread(str(paths.images[split] / info["file_name"])), cv2.COLOR_BGR2RGB)
            error = np.abs(jpeg.astype(int) - scene.image).mean()
            assert error < 4 < np.abs(jpeg[..., ::-1].astype(int) - scene.image).mean(), "RGB order kept"


def test_mask_style_encodings(datasets):
    rle = _load(datasets["rle"].annotations["train"])["annotations"][0]
    assert isinstance(rle["segmentation"]["counts"], str) and rle["iscrowd"] == 0
    cvat = _load(datasets["cvat"].annotations["train"])["annotations"][0]
    assert isinstance(cvat["segmentation"]["counts"], list) and cvat["iscrowd"] == 1
    assert all(isinstance(c, int) for c in cvat["segmentation"]["counts"])
    polygon = _load(datasets["polygon"].annotations["train"])["annotations"][0]
    assert isinstance(polygon["segmentation"], list) and polygon["iscrowd"] == 0
    mask = np.zeros((5, 4), bool)
    mask[0, 0] = mask[2:4, 1:3] = True
    segmentation = encode_segmentation(mask, "cvat")[0]
    assert segmentation == {"size": [5, 4], "counts": [0, 1, 6, 2, 3, 2, 6]}  # column-major, zeros first
    assert np.array_equal(mask_util.decode(mask_util.frPyObjects(segmentation, 5, 4)), mask)
    assert encode_segmentation(~mask, "cvat")[0]["counts"][:2] == [1, 6]
    with pytest.raises(ValueError):
        encode_segmentation(mask, "bitmap")


def test_dataset_is_deterministic_across_counts(tmp_path):
    small = generate_dataset(tmp_path / "a", num_train=2, num_val=1, image_size=128, seed=9, progress=False)
    large = generate_dataset(tmp_path / "b", num_train=4, num_val=0, image_size=128, seed=9, progress=False)
    again = generate_dataset(tmp_path / "c", num_train=2, num_val=1, image_size=128, seed=9, progress=False)
    for name in ("000000.jpg", "000001.jpg"):
        first = (small.images["train"] / name).read_bytes()
        assert first == (large.images["train"] / name).read_bytes()
        assert first == (again.images["train"] / name).read_bytes()
    a, b = _load(small.annotations["train"]), _load(large.annotations["train"])
    assert b["images"][:2] == a["images"]
    assert b["annotations"][: len(a["annotations"])] == a["annotations"]
    assert small.annotations["val"].read_bytes() == again.annotations["val"].read_bytes()
    written = sorted(p.name for p in (tmp_path / "a" / "annotations").iterdir())
    assert written == ["instances_train.json", "instances_val.json"], "temp files must be replaced"


def test_worker_processes_do_not_change_output(tmp_path):
    one = generate_dataset(tmp_path / "one", num_train=3, num_val=0, image_size=96, workers=1, progress=False)
    two = generate_dataset(tmp_path / "two", num_train=3, num_val=0, image_size=96, workers=2, progress=False)
    assert one.annotations["train"].read_bytes() == two.annotations["train"].read_bytes()
    for i in range(3):
        name = f"{i:06d}.jpg"
        assert (one.images["train"] / name).read_bytes() == (two.images["train"] / name).read_bytes()


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_train=1, num_val=0, coco_mask_style="mask")
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_train=-1)
    with pytest.raises(ValueError):
        render_sample(0, "test", 0)


def test_cvat_xml_matches_coco(tmp_path):
    from barrier_annotator.cvat import CvatDocument

    paths = generate_dataset(tmp_path, num_train=2, num_val=1, image_size=160, seed=2, write_cvat_xml=True,
                             progress=False)
    for split in ("train", "val"):
        document = CvatDocument.load(paths.cvat_xml[split])
        assert [label.name for label in document.labels] == list(CLASS_NAMES)
        coco = _load(paths.annotations[split])
        assert [image.name for image in document.images] == [i["file_name"] for i in coco["images"]]
        for image in document.images:
            assert (paths.images[split] / image.name).is_file()
            scene = render_sample(2, split, int(Path(image.name).stem), 160)
            shapes = image.masks()
            assert [s.label for s in shapes] == [inst.class_name for inst in scene.instances]
            for shape, inst in zip(shapes, scene.instances, strict=True):
                assert np.array_equal(shape.to_mask(image.height, image.width), inst.mask)


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "barrier_annotator.training.data.synthetic", "--out", str(out), "--train", "2",
         "--val", "1", "--size", "96", "--seed", "3", "--coco-mask-style", "polygon", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["000000.jpg", "000001.jpg"]
    val = _load(out / "annotations" / "instances_val.json")
    assert len(val["images"]) == 1 and val["info"]["mask_style"] == "polygon"
    bad = subprocess.run([sys.executable, "-m", "barrier_annotator.training.data.synthetic", "--out", str(out),
                          "--size", "8"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0


# --- walk-through runs (near-duplicate frames) -----------------------------------------------------

def test_walk_frames_are_near_duplicates_of_their_run_and_deterministic():
    from itertools import pairwise

    from barrier_annotator.training.data.synthetic import render_walk_sample

    run = [render_walk_sample(0, "train", 3, frame, 5, image_size=96) for frame in range(5)]
    other = render_walk_sample(0, "train", 4, 0, 5, image_size=96)
    again = render_walk_sample(0, "train", 3, 2, 5, image_size=96)
    np.testing.assert_array_equal(again.image, run[2].image)
    assert all(a.image.shape == run[0].image.shape for a in run)
    step = np.mean([np.abs(a.image.astype(int) - b.image.astype(int)).mean() for a, b in pairwise(run)])
    if other.image.shape == run[0].image.shape:
        assert step < np.abs(other.image.astype(int) - run[0].image.astype(int)).mean()
    assert not np.array_equal(run[0].image, run[1].image)  # own noise: no two frames are byte-identical
    for scene in run:  # masks are the window's crop: same classes, within the frame
        assert scene.instances and all(i.mask.shape == scene.image.shape[:2] and i.mask.any() for i in scene.instances)
    assert {i.class_name for i in run[0].instances} & {i.class_name for i in run[-1].instances}


def test_walk_runs_leave_plain_samples_unchanged_and_are_recorded_in_coco(tmp_path):
    from barrier_annotator.training.data.synthetic_walk import parse_lengths, run_positions

    assert parse_lengths("2x3,1") == (3, 3, 1)
    assert run_positions((2, 1)) == [(0, 0, 2), (0, 1, 2), (1, 0, 1)]
    for bad in ("", "0x3", "2x0", "ax3"):
        with pytest.raises(ValueError):
            parse_lengths(bad)
    plain = generate_dataset(tmp_path / "plain", num_train=2, num_val=1, image_size=64, progress=False)
    walked = generate_dataset(tmp_path / "walk", num_train=3, num_val=1, image_size=64, progress=False,
                              walk_runs={"train": (2, 1)})
    coco = json.loads(walked.annotations["train"].read_text())
    assert [image["walk"] for image in coco["images"]] == [
        {"run": 0, "frame": 0, "length": 2}, {"run": 0, "frame": 1, "length": 2}, {"run": 1, "frame": 0, "length": 1}]
    plain_val = (tmp_path / "plain" / "images" / "val" / "000000.jpg").read_bytes()
    assert (tmp_path / "walk" / "images" / "val" / "000000.jpg").read_bytes() == plain_val  # val untouched
    assert (tmp_path / "walk" / "images" / "train" / "000000.jpg").read_bytes() != \
        (tmp_path / "plain" / "images" / "train" / "000000.jpg").read_bytes()
    with pytest.raises(ValueError, match="sum to"):
        generate_dataset(tmp_path / "bad", num_train=4, num_val=0, image_size=64, progress=False,
                         walk_runs={"train": (2, 1)})
    assert plain is not None
