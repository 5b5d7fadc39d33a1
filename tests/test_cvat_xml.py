"""CVAT for images 1.1 XML: Datumaro (CVAT's own dataset library) as the independent reader,
lossless round trips, refusal of unsafe or malformed files, atomic saving."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from cvat_sdk.masks import encode_mask as sdk_encode_mask

from barrier_annotator.cvat import (
    CvatDocument,
    CvatXmlError,
    LabelSpec,
    MaskShape,
    mask_to_polygon,
)
from mask2former.structures import Instances

FIXTURE = Path(__file__).parent / "cvat_fixtures" / "many_shapes.xml"
LABELS = ("rail_top", "rail_mid", "toeboard", "vertical_post")


def blob_frames(height: int, width: int, seed: int) -> np.ndarray:
    """A few rails and posts, some touching the frame border."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, height, width), dtype=bool)
    masks[0, 3:7, :] = True  # full-width rail, touches left and right borders
    masks[1, rng.integers(10, 20) : 25, 5:40] = True
    masks[2] = rng.random((height, width)) < 0.3  # ragged, many runs
    masks[3, 20:, width - 4 :] = True  # post in the bottom-right corner
    return masks


def build_document(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    doc = CvatDocument.new([LabelSpec(name) for name in LABELS])
    expected: dict[str, np.ndarray] = {}
    for index, name in enumerate(["a/b/c.jpg", "frame 1.png", "ünï/名前.jpg"]):
        height, width = 32 + index, 48 + 2 * index
        image = doc.add_image(name, width, height)
        masks = blob_frames(height, width, seed=index)
        instances = Instances.from_masks(masks, np.ones(4), np.arange(4), LABELS)
        for i, label in enumerate(instances.labels):
            crop, box = instances.mask_crop(i)
            image.add_mask(label, crop, box)
        expected[name] = masks
        crop, box = instances.mask_crop(1)
        image.add_polygon("rail_mid", mask_to_polygon(crop, box), source="auto", group_id=3)
    doc.add_image("empty.jpg", 20, 10)
    path = tmp_path / "annotations.xml"
    doc.save(path)
    return path, expected


# pycocotools (inside Datumaro) warns about numpy 2's copy keyword; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_saved_document_reads_back_identically_in_datumaro(tmp_path: Path) -> None:
    import datumaro as dm

    path, expected = build_document(tmp_path)
    for name in [*expected, "empty.jpg"]:  # Datumaro insists the image files exist
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"")

    dataset = dm.Dataset.import_from(str(path), "cvat")
    label_names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    assert label_names == list(LABELS)
    items = {item.id: item for item in dataset}
    assert set(items) == {"a/b/c", "frame 1", "ünï/名前", "empty"}
    assert items["empty"].annotations == []

    ours = CvatDocument.load(path)
    for name, masks in expected.items():
        item = items[os.path.splitext(name)[0]]
        got_masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        assert [label_names[a.label] for a in got_masks] == list(LABELS)
        for annotation, mask in zip(got_masks, masks, strict=True):
            np.testing.assert_array_equal(annotation.image.astype(bool), mask)
        (polygon,) = [a for a in item.annotations if a.type == dm.AnnotationType.polygon]
        (our_polygon,) = ours.image(name).polygons()
        assert label_names[polygon.label] == "rail_mid" and polygon.group == 3
        np.testing.assert_allclose(polygon.points, our_polygon.points)

    # Datumaro rasterises polygons as CVAT does: our polygon comes back as the very mask it
    # was traced from (no 1-px shift), and equals our own reader's rasterisation.
    rasterised = dataset.transform("polygons_to_masks")
    for item in rasterised:
        if item.id == "empty":
            continue
        name = next(n for n in expected if os.path.splitext(n)[0] == item.id)
        (from_polygon,) = [a for a in item.annotations if a.group == 3]
        height, width = expected[name].shape[1:]
        np.testing.assert_array_equal(from_polygon.image.astype(bool), expected[name][1])
        np.testing.assert_array_equal(ours.image(name).polygons()[0].to_mask(height, width), expected[name][1])


def test_saved_document_reads_back_in_our_reader(tmp_path: Path) -> None:
    path, expected = build_document(tmp_path)
    doc = CvatDocument.load(path)
    assert doc.version == "1.1"
    assert [(label.name, label.type) for label in doc.labels] == [(n, "mask") for n in LABELS]
    assert [(i.id, i.name) for i in doc.images] == list(enumerate([*expected, "empty.jpg"]))
    for name, masks in expected.items():
        image = doc.image(name)
        assert (image.height, image.width) == masks.shape[1:]
        got = image.masks()
        assert [m.label for m in got] == list(LABELS)
        assert all(m.source == "semi-auto" and not m.occluded and m.z_order == 0 for m in got)
        for shape, mask in zip(got, masks, strict=True):
            np.testing.assert_array_equal(shape.to_mask(image.height, image.width), mask)
        (polygon,) = image.polygons()
        assert polygon.source == "auto" and polygon.group_id == 3
        overlap = polygon.to_mask(image.height, image.width) & masks[1]
        assert overlap.sum() / (polygon.to_mask(image.height, image.width) | masks[1]).sum() >= 0.9
    assert doc.image("empty.jpg").shapes() == []


def test_mask_element_matches_cvat_server_encoding(tmp_path: Path) -> None:
    frame = blob_frames(32, 48, seed=7)[2]
    doc = CvatDocument.new(["rail_top"])
    doc.add_image("x.jpg", 48, 32).add_mask("rail_top", frame)
    element = CvatDocument.from_bytes(doc.to_bytes()).root.find("image/mask")
    *runs, xtl, ytl, xbr, ybr = sdk_encode_mask(frame)  # tight box, as CVAT stores it
    assert element.get("rle") == ", ".join(map(str, runs))
    assert [element.get(k) for k in ("left", "top", "width", "height")] == [
        str(xtl), str(ytl), str(xbr - xtl + 1), str(ybr - ytl + 1)]
    assert list(element.attrib) == ["label", "source", "occluded", "rle", "left", "top", "width",
                                    "height", "z_order"]


def test_written_file_is_utf8_with_declaration(tmp_path: Path) -> None:
    path, _ = build_document(tmp_path)
    data = path.read_bytes()
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert "ünï/名前.jpg".encode() in data and b"&#" not in data


# --- lossless round trip ---------------------------------------------------------------------


def canonical(element: ET.Element) -> tuple:
    """Tag, ordered attributes, non-blank text/tail, children: whitespace-only layout ignored."""
    def clean(text: str | None) -> str:
        return (text or "").strip()
    tag = element.tag if isinstance(element.tag, str) else str(element.tag.__name__)
    return (tag, list(element.attrib.items()), clean(element.text), clean(element.tail),
            [canonical(child) for child in element])


def parse_with_comments(data: bytes) -> ET.Element:
    return ET.fromstring(data, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))


def test_round_trip_preserves_everything_but_added_shapes(tmp_path: Path) -> None:
    original = parse_with_comments(FIXTURE.read_bytes())
    doc = CvatDocument.load(FIXTURE)
    image = doc.image("site/b/frame_000000.jpg")
    before = len(image.element)
    crop = np.ones((3, 5), dtype=bool)
    image.add_mask("rail_top", crop, (59, 44, 64, 47), attributes={"damaged": "false"})
    image.add_polygon("vertical_post", [1, 1, 5.125, 1, 5, 9])
    doc.add_image("site/b/new.jpg", 64, 48)
    out = tmp_path / "out.xml"
    doc.save(out)

    written = parse_with_comments(out.read_bytes())
    new_image = written.findall("image")[-1]
    assert new_image.get("name") == "site/b/new.jpg" and new_image.get("id") == "3"
    written.remove(new_image)
    first = written.find("image")
    added = list(first)[before:]
    assert [e.tag for e in added] == ["mask", "polygon"]
    assert added[1].get("points") == "1.00,1.00;5.12,1.00;5.00,9.00"
    assert added[0].find("attribute").text == "false"
    for element in added:
        first.remove(element)
    assert canonical(written) == canonical(original)


def test_remove_shapes_undoes_additions_only(tmp_path: Path) -> None:
    original = parse_with_comments(FIXTURE.read_bytes())
    doc = CvatDocument.load(FIXTURE)
    for image in doc.images:
        image.add_mask("rail_top", np.ones((2, 2), dtype=bool), (0, 0, 2, 2), source="semi-auto")
    assert doc.remove_shapes(lambda s: s.source == "semi-auto") == 3
    assert canonical(parse_with_comments(doc.to_bytes())) == canonical(original)
    assert doc.image("site/b/frame_000000.jpg").remove_shapes(lambda s: s.kind == "box") == 1
    assert doc.image("site/b/frame_000000.jpg").shapes()[0].kind == "polygon"


def test_add_image_goes_after_the_last_image_not_after_trailing_elements() -> None:
    data = (b'<annotations><version>1.1</version><image id="4" name="a" width="4" height="4"/>'
            b'<track id="0" label="x"><box frame="0" xtl="0" ytl="0" xbr="1" ybr="1"/></track>'
            b"</annotations>")
    doc = CvatDocument.from_bytes(data)
    doc.add_image("b", 4, 4)
    root = CvatDocument.from_bytes(doc.to_bytes()).root
    assert [(e.tag, e.get("id")) for e in root] == [("version", None), ("image", "4"), ("image", "5"),
                                                    ("track", "0")]


def test_reads_fixture_views_and_labels() -> None:
    doc = CvatDocument.load(FIXTURE)
    assert [label.name for label in doc.labels] == ["rail_top", "vertical_post", "worker", "head"]
    assert doc.labels[0].attributes == ("damaged",) and doc.labels[3].parent == "worker"
    assert [i.name for i in doc.images][2] == "site/b/ünïcödé 名前.png"
    image = doc.image("site/b/frame_000000.jpg")
    kinds = [s.kind for s in image.shapes()]
    assert kinds == ["box", "polygon", "polyline", "points", "mask", "ellipse", "cuboid", "skeleton", "tag"]
    (mask,) = image.masks()
    assert isinstance(mask, MaskShape)
    assert (mask.label, mask.z_order, mask.group_id) == ("rail_top", 2, 2)
    assert mask.attributes == {"damaged": "true"}
    expected = np.zeros((48, 64), dtype=bool)
    expected[12:16, 10:14].flat[[3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]] = True
    np.testing.assert_array_equal(mask.to_mask(48, 64), expected)
    (polygon,) = image.polygons()
    assert polygon.occluded and polygon.points == (20.0, 3.0, 24.5, 3.0, 24.5, 30.0, 20.0, 30.0)
    corner = doc.images[2].masks()[0].to_mask(48, 64)
    assert corner.sum() == 5 and corner[45:48, 62:64].sum() == 5


def test_project_labels_are_read() -> None:
    data = (b"<annotations><version>1.1</version><meta><project><labels><label><name>rail_mid</name>"
            b"<type>mask</type></label></labels></project></meta></annotations>")
    labels = CvatDocument.from_bytes(data).labels
    assert [(label.name, label.type) for label in labels] == [("rail_mid", "mask")]


def test_add_mask_refuses_bad_input() -> None:
    doc = CvatDocument.new(["rail_top"])
    image = doc.add_image("x.jpg", 10, 8)
    with pytest.raises(ValueError, match="not declared"):
        image.add_mask("unknown", np.ones((2, 2), dtype=bool), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        image.add_mask("rail_top", np.zeros((8, 10), dtype=bool))
    with pytest.raises(ValueError, match="exceeds"):
        image.add_mask("rail_top", np.ones((2, 2), dtype=bool), (9, 0, 11, 2))
    with pytest.raises(ValueError, match="full mask shape"):
        image.add_mask("rail_top", np.ones((10, 8), dtype=bool))
    with pytest.raises(ValueError, match="polygon"):
        image.add_polygon("rail_top", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="already exists"):
        doc.add_image("x.jpg", 10, 8)
    assert image.shapes() == []


# --- unsafe and malformed input ---------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE annotations [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotations><version>&lol9;</version></annotations>
"""


def xxe(secret: Path) -> bytes:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE annotations [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
            '<annotations><version>1.1</version><image id="0" name="&xxe;" width="1" height="1"/>'
            "</annotations>").encode()


BAD_FILES = {
    "billion_laughs": (BILLION_LAUGHS, "unsafe"),
    "external_dtd": (b'<!DOCTYPE annotations SYSTEM "http://example.invalid/a.dtd"><annotations/>', "unsafe"),
    "truncated": (b"<annotations><version>1.1</version><image id='0'", "malformed"),
    "empty": (b"", "malformed"),
    "not_xml": (b"rle=1,2,3", "malformed"),
    "wrong_root": (b"<dataset><version>1.1</version></dataset>", "<dataset>"),
    "image_without_name": (b'<annotations><image id="0" width="4" height="4"/></annotations>', "'name'"),
    "image_bad_width": (b'<annotations><image id="0" name="a" width="w" height="4"/></annotations>',
                        "not an integer"),
    "mask_without_rle": (b'<annotations><image id="0" name="a" width="4" height="4"><mask label="m" '
                         b'left="0" top="0" width="1" height="1"/></image></annotations>', "'rle'"),
    "mask_outside_image": (b'<annotations><image id="0" name="a" width="4" height="4"><mask label="m" '
                           b'rle="0, 4" left="3" top="0" width="2" height="2"/></image></annotations>',
                           "exceeds"),
    "shape_without_label": (b'<annotations><image id="0" name="a" width="4" height="4">'
                            b'<box xtl="0" ytl="0" xbr="1" ybr="1"/></image></annotations>', "'label'"),
    "bad_polygon": (b'<annotations><image id="0" name="a" width="4" height="4"><polygon label="p" '
                    b'points="1,1;2"/></image></annotations>', "bad points"),
    "duplicate_image": (b'<annotations><image id="0" name="a" width="4" height="4"/>'
                        b'<image id="1" name="a" width="4" height="4"/></annotations>', "twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_cvat_xml_error_naming_the_file(case: str, tmp_path: Path) -> None:
    data, message = BAD_FILES[case]
    path = tmp_path / f"{case}.xml"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(CvatXmlError, match=message) as info:
        CvatDocument.load(path)
    assert time.perf_counter() - started < 1.0
    assert str(path) in str(info.value)


def test_xxe_is_refused_without_reading_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN")
    with pytest.raises(CvatXmlError, match="unsafe") as info:
        CvatDocument.from_bytes(xxe(secret), source="upload.xml")
    assert "TOP-SECRET-TOKEN" not in str(info.value) and "upload.xml" in str(info.value)


def test_bad_rle_is_reported_when_decoded() -> None:
    data = (b'<annotations><image id="0" name="a" width="4" height="4"><mask label="m" rle="1, 2" '
            b'left="0" top="0" width="2" height="2"/></image></annotations>')
    (mask,) = CvatDocument.from_bytes(data, source="job.xml").image("a").masks()
    with pytest.raises(CvatXmlError, match=r"job.xml: <image name='a'>: <mask label='m'>: RLE covers 3"):
        mask.crop()


# --- atomic save ----------------------------------------------------------------------------


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    path, _ = build_document(tmp_path)
    path.chmod(0o640)
    previous = path.read_bytes()
    doc = CvatDocument.load(path)
    doc.add_image("later.jpg", 8, 8)
    doc.root.find("image").set("broken", 5)  # not a string: ElementTree fails mid-serialisation
    with pytest.raises(TypeError):
        doc.save(path)
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.xml"]

    doc.root.find("image").attrib.pop("broken")
    doc.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert CvatDocument.load(path).images[-1].name == "later.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.xml"]


def test_new_files_get_umask_permissions_not_mkstemps(tmp_path: Path) -> None:
    from mask2former.utils import atomic_write_with

    previous = os.umask(0o027)
    try:
        atomic_write_with(tmp_path / "new.xml", lambda handle: handle.write(b"<annotations/>"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.xml").stat().st_mode) == 0o640
    assert (tmp_path / "new.xml").read_bytes() == b"<annotations/>"


def test_only_power_cut_safety_is_optional(tmp_path: Path, monkeypatch) -> None:
    """Without fsyncs a write is still atomic (temp file + rename); with them, the data and then
    the directory are synced. The labelling run skips them only for what it can redo."""
    from mask2former import utils

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(utils.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                      real_fsync(fd)))
    target = tmp_path / "out.json"
    utils.atomic_write_json(target, {"a": 1})
    assert synced[0].startswith(str(tmp_path / ".out.json.")) and synced[1:] == [str(tmp_path)]
    synced.clear()
    utils.atomic_write_json(target, {"a": 2}, sync_directory=False)
    assert len(synced) == 1 and synced[0].startswith(str(tmp_path / ".out.json."))
    synced.clear()
    with utils.atomic_open(target, "w", sync_data=False, sync_directory=False) as handle:
        handle.write('{"a": 3}')
    assert synced == [] and target.read_text() == '{"a": 3}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
