"""Training data: COCO / CVAT XML loading, dataset catalog, augmentation geometry, sampling."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from barrier_annotator.training.data.augment import (
    FixedSizeCrop,
    RandomFlip,
    ResizeScale,
    ResizeShortestEdge,
    build_train_augmentation,
    shortest_edge_size,
)
from barrier_annotator.training.data.catalog import (
    add_dataset_arguments,
    add_dataset_config,
    apply_dataset_arguments,
    catalog_from_config,
    load_datasets,
)
from barrier_annotator.training.data.coco import DatasetFormatError, load_coco_instances
from barrier_annotator.training.data.cvat_xml import load_cvat_xml
from barrier_annotator.training.data.dataset import InstanceDataset, InstanceMapper, collate
from barrier_annotator.training.data.dataset_records import BitmaskSource, PolygonSource, RLESource, UnionSource
from barrier_annotator.training.data.sampler import InferenceSampler, TrainingSampler
from mask2former.config import get_cfg

CLASSES = ("rail_top", "rail_mid", "toeboard", "vertical_post")
H, W = 60, 80


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _image_with(masks: list[np.ndarray]) -> np.ndarray:
    """Black image, white where any mask is: alignment of masks and pixels is visible."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for mask in masks:
        image[mask] = 255
    return image


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.uint8)  # COCO RLE runs go column by column
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


@pytest.fixture
def coco_dataset(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A CVAT-style COCO export: polygons (iscrowd 0), mask shapes as iscrowd-1 RLE."""
    images = tmp_path / "images" / "train"
    images.mkdir(parents=True)
    masks = {"poly": _rect(10, 10, 30, 20), "rle": _rect(40, 5, 70, 15), "raw_rle": _rect(5, 30, 25, 55),
             "two_part": _rect(50, 30, 60, 40) | _rect(65, 45, 75, 55)}
    Image.fromarray(_image_with(list(masks.values()))).save(images / "a.png")
    Image.fromarray(_image_with([])).save(images / "b.png")
    compressed = mask_util.encode(np.asfortranarray(masks["rle"].astype(np.uint8)))
    data = {
        # ids deliberately not in the model's order; one name differs in case/spacing
        "categories": [{"id": 7, "name": "vertical_post"}, {"id": 3, "name": "Rail Top"},
                       {"id": 5, "name": "toeboard"}, {"id": 9, "name": "rail_mid"},
                       {"id": 11, "name": "person"}],
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W},
                   {"id": 3, "file_name": "missing.png", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20], [1, 1, 2]], "bbox": [10, 10, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 5, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": compressed["counts"].decode("ascii")}},
            {"id": 3, "image_id": 1, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": _uncompressed_rle(masks["raw_rle"])}},
            {"id": 4, "image_id": 1, "category_id": 9, "iscrowd": 0,
             "segmentation": [[50, 30, 60, 30, 60, 40, 50, 40], [65, 45, 75, 45, 75, 55, 65, 55]]},
            {"id": 5, "image_id": 1, "category_id": 11, "iscrowd": 0,
             "segmentation": [[0, 0, 5, 0, 5, 5]]},
            {"id": 6, "image_id": 2, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": [H * W]}},
            {"id": 7, "image_id": 2, "category_id": 7, "iscrowd": 0, "bbox": [1, 1, 4, 4]},
            {"id": 8, "image_id": 3, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 5, 0, 5, 5]]},
        ],
    }
    path = tmp_path / "annotations" / "instances_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path, images, masks


def test_coco_loads_every_instance_kinds_and_reports_skips(coco_dataset, caplog):
    path, images, masks = coco_dataset
    with caplog.at_level(logging.INFO):
        records, report = load_coco_instances(path, images, CLASSES, "safetybarrier_train")
    assert [Path(r.file_name).name for r in records] == ["a.png", "b.png"]
    a = records[0]
    kinds = {inst.source_id: inst for inst in a.instances}
    assert set(kinds) == {1, 2, 3, 4}
    assert isinstance(kinds[1].mask, PolygonSource) and len(kinds[1].mask.polygons) == 1
    assert isinstance(kinds[2].mask, RLESource) and isinstance(kinds[3].mask, RLESource)
    assert kinds[2].iscrowd and kinds[3].iscrowd
    assert [kinds[i].category_id for i in (1, 2, 3, 4)] == [0, 2, 3, 1]  # by name, not id
    for ann_id, name in ((2, "rle"), (3, "raw_rle"), (4, "two_part")):
        np.testing.assert_array_equal(kinds[ann_id].mask.decode(H, W), masks[name])
    # pycocotools polygon rasterisation covers the rectangle (it is inclusive on the far edge)
    poly = kinds[1].mask.decode(H, W)
    assert poly[masks["poly"]].all() and poly.sum() <= (21 * 11)
    assert records[1].instances == ()
    assert report.images_kept == 2 and report.images_total == 3
    assert report.total_instances == 4 and report.crowd_kept == 2
    assert report.skipped_images == {"missing image file": 1}
    skipped = dict(report.skipped_instances)
    assert skipped == {"category 'person' not among the model classes": 1, "empty mask": 1,
                       "no segmentation (box-only annotation)": 1, "missing image file (its annotations)": 1}
    assert report.notes == {"polygon part with < 3 points dropped": 1}
    assert "2 iscrowd=1 annotations kept as instances" in report.summary()
    assert "'Rail Top' matched model class 'rail_top'" in caplog.text


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>rail_top</name><type>any</type></label>
    <label><name>toeboard</name><type>mask</type></label>
    <label><name>sign</name><type>any</type></label>
  </labels></task></meta>
  <image id="4" name="a.png" width="80" height="60">
    <mask label="toeboard" source="manual" occluded="0" rle="0, 2, 1, 3" left="2" top="1" width="3"
          height="2" z_order="0"></mask>
    <polygon label="rail_top" source="manual" occluded="0"
             points="10.00,10.00;30.00,10.00;30.00,20.00;10.00,20.00" z_order="0"></polygon>
    <box label="rail_top" source="manual" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"></box>
    <polygon label="sign" source="manual" occluded="0" points="1,1;5,1;5,5" z_order="0"></polygon>
  </image>
  <image id="5" name="gone.png" width="80" height="60">
    <mask label="toeboard" source="manual" occluded="0" rle="0, 1" left="0" top="0" width="1" height="1"
          z_order="0"></mask>
  </image>
</annotations>
"""


def test_cvat_xml_loads_masks_and_polygons(tmp_path, coco_dataset):
    coco_path, images, _ = coco_dataset
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT_XML)
    records, report = load_cvat_xml(xml, images, CLASSES, "cvat_train")
    assert len(records) == 1 and records[0].image_id == 4
    mask, polygon = records[0].instances
    assert isinstance(mask.mask, BitmaskSource) and mask.category_id == 2
    expected = np.zeros((H, W), dtype=bool)
    expected[1, 2:4] = True
    expected[2, 2:5] = True
    np.testing.assert_array_equal(mask.mask.decode(H, W), expected)
    assert isinstance(polygon.mask, PolygonSource) and polygon.category_id == 0
    # the same polygon from CVAT's COCO export rasterises identically
    coco_records, _ = load_coco_instances(coco_path, images, CLASSES)
    coco_poly = next(i for i in coco_records[0].instances if i.source_id == 1)
    np.testing.assert_array_equal(polygon.mask.decode(H, W), coco_poly.mask.decode(H, W))
    assert report.total_instances == 2
    assert report.skipped_images == {"missing image file": 1}
    assert dict(report.skipped_instances) == {"<box> shapes carry no mask": 1,
                                              "label 'sign' not among the model classes": 1,
                                              "missing image file (its annotations)": 1}


CVAT_GROUPS = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>rail_top</name><type>any</type></label><label><name>rail_mid</name><type>any</type></label>
    <label><name>toeboard</name><type>any</type></label><label><name>vertical_post</name><type>any</type></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="80" height="60">
    <polygon label="rail_top" source="file" occluded="0" points="10,10;30,10;30,20;10,20" group_id="1" />
    <polygon label="vertical_post" source="file" occluded="0" points="0,30;4,30;4,50;0,50" />
    <polygon label="rail_top" source="file" occluded="0" points="40,10;60,10;60,20;40,20" group_id="1" />
    <mask label="toeboard" source="file" occluded="0" rle="0, 20" left="50" top="40" width="10" height="2"
          group_id="2" />
    <polygon label="toeboard" source="file" occluded="0" points="62,40;70,40;70,42;62,42" group_id="2" />
    <polygon label="rail_mid" source="file" occluded="0" points="10,25;30,25;30,28;10,28" group_id="1" />
    <polygon label="vertical_post" source="file" occluded="0" points="6,30;9,30;9,50;6,50" />
    <box label="rail_top" source="file" occluded="0" xtl="1" ytl="1" xbr="3" ybr="3" group_id="1" />
  </image>
  <image id="1" name="b.png" width="80" height="60">
    <polygon label="rail_top" source="file" occluded="0" points="10,10;30,10;30,20;10,20" group_id="1" />
  </image>
</annotations>
"""


def test_cvat_groups_of_one_label_are_one_object(tmp_path, coco_dataset):
    """CVAT marks an object drawn in pieces with a shared group_id (barrier-label --polygons writes a
    rail cut by a post so): one label + one group within an image = one training instance."""
    _, images, _ = coco_dataset
    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT_GROUPS)
    (images / "b.png").write_bytes((images / "a.png").read_bytes())
    records, report = load_cvat_xml(xml, images, CLASSES)
    first, second = records
    assert [CLASSES[i.category_id] for i in first.instances] == [
        "rail_top", "vertical_post", "toeboard", "rail_mid", "vertical_post"]
    rail, _, board, _, _ = first.instances
    assert isinstance(rail.mask, PolygonSource) and len(rail.mask.polygons) == 2  # stays polygons
    np.testing.assert_array_equal(rail.mask.decode(H, W), _rect(10, 10, 30, 20) | _rect(40, 10, 60, 20))
    assert isinstance(board.mask, UnionSource) and board.mask.area(H, W) == 20 + 16
    np.testing.assert_array_equal(board.mask.decode(H, W), _rect(50, 40, 70, 42) & ~_rect(60, 40, 62, 42))
    assert len(second.instances) == 1  # the same group id in another image is another object
    assert report.total_instances == 6 and report.notes["grouped shapes united into one object (CVAT group_id)"] == 2
    _, target = InstanceMapper([RandomFlip(1.0)])(first, np.random.default_rng(0))
    assert target["masks"].shape == (5, H, W)
    np.testing.assert_array_equal(target["masks"][2].numpy(), board.mask.decode(H, W)[:, ::-1])


def test_cvat_video_export_is_refused_with_a_way_out(tmp_path):
    xml = tmp_path / "annotations.xml"
    xml.write_text("""<annotations><version>1.1</version><track id="0" label="rail_top">
        <polygon frame="0" keyframe="1" outside="0" occluded="0" points="1,1;5,1;5,5" /></track></annotations>""")
    with pytest.raises(DatasetFormatError, match=r"'CVAT for video 1\.1' export .*'CVAT for images 1\.1'"):
        load_cvat_xml(xml, tmp_path, CLASSES)


def test_catalog_resolves_seed_layout_and_explicit_registrations(tmp_path, coco_dataset, monkeypatch):
    path, images, _ = coco_dataset
    layout = tmp_path / "root" / "safetybarrier"
    (layout / "annotations").mkdir(parents=True)
    (layout / "images").mkdir()
    (layout / "annotations" / "instances_train.json").write_text(path.read_text())
    (layout / "images" / "train").symlink_to(images, target_is_directory=True)

    cfg = add_dataset_config(get_cfg())
    cfg.merge_from_list(["DATASETS.ROOT", str(tmp_path / "root")])
    catalog = catalog_from_config(cfg)
    spec = catalog.get("safetybarrier_train")
    assert spec.format == "coco" and spec.images == layout / "images" / "train"
    with pytest.raises(KeyError, match=r"instances_val\.json"):
        catalog.get("safetybarrier_val")

    parser = add_dataset_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "barriers_val", str(path), str(images),
                              "--datasets-root", str(tmp_path / "elsewhere")])
    monkeypatch.chdir(tmp_path)
    cfg = apply_dataset_arguments(add_dataset_config(get_cfg()), args)
    registered = cfg.DATASETS.REGISTER
    assert registered == [["barriers_val", str(path), str(images)]]
    records = load_datasets(["barriers_val"], catalog_from_config(cfg), CLASSES, filter_empty=True)
    assert len(records) == 1  # b.png has no instance left: filtered for training
    dumped = cfg.dump()  # the registration survives a config dump / reload
    reloaded = add_dataset_config(get_cfg())
    reloaded.merge_from_other_cfg(type(cfg).load_cfg(dumped))
    assert reloaded.DATASETS.REGISTER == cfg.DATASETS.REGISTER


@pytest.mark.parametrize(("size", "short", "max_size", "expected"), [
    ((480, 640), 800, 1333, (800, 1067)),
    ((1080, 1920), 800, 1333, (750, 1333)),
    ((1000, 600), 640, 1333, (1067, 640)),
    ((500, 500), 700, 1333, (700, 700)),
    ((333, 1000), 720, 1333, (444, 1333)),
])
def test_shortest_edge_rounding_matches_detectron2(size, short, max_size, expected):
    assert shortest_edge_size(*size, short, max_size) == expected


def test_resize_shortest_edge_sampling():
    rng = np.random.default_rng(0)
    choice = ResizeShortestEdge((640, 672, 800), 1333, "choice")
    drawn = [choice.get_transform(480, 640, rng) for _ in range(60)]
    shorts = {min(t.new_height, t.new_width) for t in drawn}
    assert shorts == {640, 672, 800}
    ranged = ResizeShortestEdge((640, 800), 1333, "range")
    shorts = [ranged.get_transform(480, 640, rng).new_height for _ in range(200)]
    assert min(shorts) >= 640 and max(shorts) <= 800 and len(set(shorts)) > 50


def test_mapper_name_dispatch_matches_upstream():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
    cfg.INPUT.DATASET_MAPPER_NAME = "safetybarrier_instance_lsj"  # the seed's: NOT upstream's LSJ
    kinds = [type(a) for a in build_train_augmentation(cfg)]
    assert kinds == [ResizeShortestEdge, RandomFlip]
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_instance_lsj"
    assert [type(a) for a in build_train_augmentation(cfg)] == [RandomFlip, ResizeScale, FixedSizeCrop]
    cfg.INPUT.RANDOM_FLIP = "none"
    assert [type(a) for a in build_train_augmentation(cfg)] == [ResizeScale, FixedSizeCrop]


def _alignment(image: torch.Tensor, masks: torch.Tensor) -> float:
    """IoU between the white pixels of the image and the union of masks."""
    white = image.mean(0) > 127
    union = masks.any(0)
    return float((white & union).sum() / (white | union).sum())


@pytest.mark.parametrize("lsj", [False, True])
def test_masks_stay_aligned_after_resize_flip_crop(coco_dataset, lsj):
    path, images, _ = coco_dataset
    records, _ = load_coco_instances(path, images, CLASSES)
    if lsj:
        augs = [RandomFlip(1.0), ResizeScale(1.5, 1.5, 64, 64), FixedSizeCrop((64, 64))]
    else:
        augs = [ResizeShortestEdge((120,), 1333, "choice"), RandomFlip(1.0)]
    image, target = InstanceMapper(augs)(records[0], np.random.default_rng(0))
    assert image.dtype == torch.float32 and image.shape[0] == 3 and image.max() <= 255
    assert target["masks"].dtype == torch.bool and target["masks"].shape[1:] == image.shape[1:]
    if not lsj:
        assert image.shape[1:] == (120, 160)
        assert target["labels"].tolist() == [0, 2, 3, 1]
        # flipped: the top-left polygon now lies on the right
        assert target["masks"][0][:, 80:].sum() > 0 and target["masks"][0][:, :80].sum() == 0
    else:
        assert image.shape[1:] == (64, 64)
        assert len(target["labels"]) >= 1
    assert _alignment(image, target["masks"]) > 0.85
    for mask in target["masks"]:  # each instance individually lies on white pixels
        assert (image.mean(0)[mask] > 127).float().mean() > 0.85


def test_lsj_pads_with_128_and_zero_masks():
    rng = np.random.default_rng(0)
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    resize = ResizeScale(0.5, 0.5, 1024, 1024).get_transform(480, 640, rng)
    assert (resize.new_height, resize.new_width) == (384, 512)
    small = resize.apply_image(image)
    crop = FixedSizeCrop((1024, 1024)).get_transform(384, 512, rng)
    out = crop.apply_image(small)
    assert out.shape == (1024, 1024, 3) and out[500, 600, 0] == 128 and out[0, 0, 0] == 0
    mask = crop.apply_mask(np.ones((384, 512), dtype=bool))
    assert mask.shape == (1024, 1024) and mask.sum() == 384 * 512


def test_sampler_shards_and_resumes_deterministically(coco_dataset):
    samplers = [TrainingSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    streams = [[next(it) for _ in range(15)] for it in map(iter, samplers)]
    first_epoch = [s[0] for s in streams[0][:5]] + [s[0] for s in streams[1][:5]]
    assert sorted(first_epoch) == list(range(10))  # one epoch = every index once over both ranks
    resumed = iter(TrainingSampler(10, seed=3, rank=1, world_size=2, start=7))
    assert [next(resumed) for _ in range(8)] == streams[1][7:15]
    other_seed = iter(TrainingSampler(10, seed=4, rank=0, world_size=2))
    assert [next(other_seed)[0] for _ in range(5)] != [s[0] for s in streams[0][:5]]
    shards = [list(InferenceSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 3]
    assert [i for shard in shards for i in shard] == list(range(11))

    path, images, _ = coco_dataset
    records, _ = load_coco_instances(path, images, CLASSES)
    dataset = InstanceDataset(records, InstanceMapper([ResizeShortestEdge((40, 80), 1333, "range"),
                                                       RandomFlip()]))
    keys = iter(TrainingSampler(len(dataset), seed=0, rank=0, world_size=1))
    key = next(keys)
    (img1, t1), (img2, t2) = dataset[key], dataset[key]
    assert torch.equal(img1, img2) and torch.equal(t1["masks"], t2["masks"])
    images_batch, targets = collate([dataset[next(keys)] for _ in range(3)])
    assert len(images_batch) == len(targets) == 3


def test_size_mismatch_is_a_clear_error(coco_dataset):
    path, images, _ = coco_dataset
    data = json.loads(path.read_text())
    data["images"][0]["height"], data["images"][0]["width"] = W, H
    path.write_text(json.dumps(data))
    records, _ = load_coco_instances(path, images, CLASSES)
    with pytest.raises(ValueError, match="EXIF"):
        InstanceMapper([])(records[0], np.random.default_rng(0))
