"""Frame decoding (odd formats, corrupt files, bombs) and config loading (``_BASE_``, errors)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mask2former.config import ConfigError, load_config
from mask2former.config.class_names import BARRIER_CLASSES, COCO_CLASSES, class_names_for
from mask2former.io import ImageDecodeError, decode_image

from .conftest import REPO_ROOT, SWIN_L_CONFIG, SWIN_T_CONFIG, TINY_CONFIG


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_gray_rgba_palette_and_16_bit_become_rgb_uint8():
    gray = Image.fromarray(np.full((5, 7), 100, np.uint8))
    assert decode_image(_encode(gray)).shape == (5, 7, 3)
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 200, np.uint8), np.full((4, 4), 0, np.uint8)]), "RGBA")
    assert decode_image(_encode(rgba)).max() == 0  # fully transparent -> black
    sixteen = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    decoded = decode_image(_encode(sixteen))
    assert decoded.dtype == np.uint8 and decoded.shape == (3, 3, 3) and decoded.min() == 255
    palette = gray.convert("P")
    assert decode_image(_encode(palette)).shape == (5, 7, 3)


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    assert decode_image(_encode(image, "JPEG", exif=exif)).shape == (20, 10, 3)


def test_truncated_and_non_images_and_bombs_are_refused():
    jpeg = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"hello world")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    big = _encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode_image(big, max_pixels=1_000_000)


def test_base_chain_and_overrides():
    cfg = load_config(SWIN_T_CONFIG, ["SOLVER.MAX_ITER", "7"])
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"  # from the COCO Swin-T file
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 4  # from the safetybarrier base
    assert cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6  # from the R50 file two levels up
    assert cfg.SOLVER.IMS_PER_BATCH == 12 and cfg.SOLVER.MAX_ITER == 7
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    large = load_config(SWIN_L_CONFIG)
    assert large.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 200 and large.SOLVER.IMS_PER_BATCH == 4
    assert class_names_for(cfg) == BARRIER_CLASSES
    coco = load_config(REPO_ROOT / "configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml")
    assert class_names_for(coco) == COCO_CLASSES


def test_config_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"Non-existent key: MODEL\.NOPE"):
        load_config(TINY_CONFIG, ["MODEL.NOPE", "1"])
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*BASE_LRR"):
        load_config(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_config(TINY_CONFIG, ["SOLVER.MAX_ITER"])


def test_full_detectron2_dump_merges(parity_dir):
    cfg = load_config(parity_dir / "tiny_config.yaml")
    assert cfg.MODEL.RPN.NMS_THRESH == 0.7  # an unused detectron2 section is accepted as-is
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 12
