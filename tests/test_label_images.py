"""Offline batch labelling (``barrier-label``): CVAT XML that Datumaro reads back pixel for pixel,
human work preserved, the tool's own shapes recognised after a trip through CVAT, crash-safe
resume (simulated crashes at several points and a SIGKILL), bad inputs reported, not fatal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from barrier_annotator.cvat import (
    CvatDocument,
    LabelSpec,
    decode_rle,
    encode_rle,
    instance_polygons,
    paste_crop,
    polygons_to_mask,
)
from barrier_annotator.labelling import (
    FatalInputError,
    LabelOptions,
    PredictionRecord,
    ShapeChoice,
    UnsafeImageNameError,
    label_folder,
    relative_parts,
    shape_kinds,
)
from barrier_annotator.labelling import outputs as outputs_module
from barrier_annotator.labelling.ownership import AnnotationMerger
from barrier_annotator.labelling.prefetch import prefetch
from barrier_annotator.tools import label_images
from barrier_annotator.training.data.synthetic import generate_dataset
from mask2former.io import read_image
from mask2former.predictor import Predictor
from mask2former.structures import Instances

from .conftest import REPO_ROOT, TINY_CONFIG

FIXTURE = Path(__file__).parent / "cvat_fixtures" / "many_shapes.xml"
SIZE_OPTS = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "112", "TEST.DETECTIONS_PER_IMAGE", "8"]
THRESHOLD = 0.2  # a random-init model scores about 0.2-0.25: enough instances to test with


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the tool may catch it, as nothing survives a real crash."""


# --- fixtures ----------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the tiny model on 64 px frames: small ops


@pytest.fixture(scope="module")
def predictor(tiny_cfg, tiny_model) -> Predictor:
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(SIZE_OPTS)
    return Predictor(cfg, model=tiny_model, backend="torch", score_threshold=THRESHOLD)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Six small synthetic scenes with their CVAT XML (human masks, source "manual")."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, num_train=6, num_val=0, image_size=64, write_cvat_xml=True, progress=False)
    return root


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    return path


def make_input(synthetic: Path, folder: Path, names: list[str] | None = None, count: int = 6,
               label_type: str = "mask") -> Path:
    """``folder/images/<name>`` + ``folder/annotations.xml``, optionally renaming the images."""
    tree = ET.parse(synthetic / "annotations" / "train.xml")
    for element in tree.getroot().iter("type"):
        element.text = label_type
    images = tree.getroot().findall("image")
    for element in images[count:]:
        tree.getroot().remove(element)
    for index, element in enumerate(images[:count]):
        source = synthetic / "images" / "train" / element.get("name")
        if names is not None:
            element.set("name", names[index])
        try:
            target = folder.joinpath("images", *relative_parts(element.get("name")))
        except UnsafeImageNameError:
            continue  # never copy outside the test folder
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    tree.write(folder / "annotations.xml", encoding="utf-8", xml_declaration=True)
    return folder


def options(input_dir: Path, output_dir: Path, **overrides) -> LabelOptions:
    settings = {"batch_size": 2, "workers": 1, "save_interval": 0.0, "progress": False,
                "model": {"weights": "tiny-random"}, **overrides}
    return LabelOptions(input_dir=input_dir, output_dir=output_dir, **settings)


def cli_args(input_dir: Path, output_dir: Path, weights: Path, *extra: str, opts: list[str] = SIZE_OPTS) -> list[str]:
    return ["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--config-file", str(TINY_CONFIG),
            "--weights", str(weights), "--device", "cpu", "--backend", "torch", "--confidence-threshold",
            str(THRESHOLD), "--workers", "1", "--no-progress", *extra, "--opts", *opts]


def shape_counts(path: Path) -> dict[str, int]:
    return {image.name: len(image.shapes()) for image in CvatDocument.load(path).images}


def records(output_dir: Path) -> dict[str, PredictionRecord]:
    found = {}
    for path in (output_dir / "predictions").rglob("*.json"):
        record = PredictionRecord.from_json(json.loads(path.read_text()))
        found[record.image] = record
    return found


def canonical(element: ET.Element) -> tuple:
    """Tag, ordered attributes, non-blank text, children: the XML infoset without layout."""
    return (element.tag, list(element.attrib.items()), (element.text or "").strip(),
            [canonical(child) for child in element])


# --- Datumaro reads every predicted mask back ------------------------------------------------


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_datumaro_reads_back_every_predicted_mask_and_sub_folders_do_not_collide(synthetic, predictor, tmp_path):
    import datumaro as dm

    names = ["site-a/cam1/0001.jpg", "site-b/cam1/0001.jpg", "top.jpg", "ünï/名前 1.jpg"]
    input_dir = make_input(synthetic, tmp_path / "in", names, count=4)
    output_dir = tmp_path / "out"
    summary = label_folder(predictor, options(input_dir, output_dir))
    assert summary.exit_code == 0 and summary.predicted == 4 and summary.shapes.total() > 10

    images = [read_image(input_dir / "images" / name) for name in names]
    expected = []
    for start in range(0, len(images), 2):  # the tool's batches: same padding, same pixels
        expected += predictor.predict_batch(images[start:start + 2])
    human = {image.name: [m.to_mask(image.height, image.width) for m in image.masks()]
             for image in CvatDocument.load(input_dir / "annotations.xml").images}

    (output_dir / "images").symlink_to(input_dir / "images")  # Datumaro wants the images beside the XML
    dataset = dm.Dataset.import_from(str(output_dir / "annotations.xml"), "cvat")
    label_names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    items = {item.id: item for item in dataset}
    assert set(items) == {os.path.splitext(name)[0] for name in names}
    for name, instances in zip(names, expected, strict=True):
        got = [a for a in items[os.path.splitext(name)[0]].annotations if a.type == dm.AnnotationType.mask]
        assert len(got) == len(human[name]) + len(instances)
        for annotation, mask in zip(got, human[name], strict=False):
            np.testing.assert_array_equal(annotation.image.astype(bool), mask)
        ours = got[len(human[name]):]
        assert [label_names[a.label] for a in ours] == instances.labels
        for annotation, mask in zip(ours, instances.masks, strict=True):
            np.testing.assert_array_equal(annotation.image.astype(bool), mask)

    for name in names:  # outputs mirror the sub-folders: equal base names do not collide
        assert (output_dir / "visuals" / name).is_file()
        assert (output_dir / "predictions" / f"{name}.json").is_file()
    record = records(output_dir)["site-b/cam1/0001.jpg"]
    for item, mask in zip(record.instances, expected[1].masks, strict=True):
        x0, y0, x1, y1 = item.box
        np.testing.assert_array_equal(paste_crop(decode_rle(item.rle, x1 - x0, y1 - y0), item.box, *mask.shape),
                                      mask)
    element = ET.parse(output_dir / "annotations.xml").getroot().find("image[@name='top.jpg']")
    ours = [e for e in element if e.get("source") == "semi-auto"]
    assert ours and all(e.tag == "mask" and e.get("rle").split(", ")[0].isdigit() for e in ours)


def test_polygons_mode_writes_grouped_polygons_and_replaces_them_on_rerun(synthetic, predictor, tmp_path):
    input_dir = make_input(synthetic, tmp_path / "in", count=2, label_type="any")
    output_dir = tmp_path / "out"
    label_folder(predictor, options(input_dir, output_dir, polygons=True))
    doc = CvatDocument.load(output_dir / "annotations.xml")
    image = doc.images[0]
    record = records(output_dir)[image.name]
    ours = [s for s in image.polygons() if s.source == "semi-auto"]
    assert not image.masks() or all(m.source == "manual" for m in image.masks())
    assert len(ours) == len(record.shapes) > 0
    first = record.instances[0]
    x0, y0, x1, y1 = first.box
    parts = instance_polygons(decode_rle(first.rle, x1 - x0, y1 - y0), first.box)
    assert [list(s.points) for s in first.shapes] == [[round(v, 2) for v in p] for p in parts]
    grouped = [s for s in ours if s.group_id]
    assert len({s.group_id for s in grouped}) == sum(len(i.shapes) > 1 for i in record.instances)

    before = output_dir.joinpath("annotations.xml").read_bytes()
    again = label_folder(predictor, options(input_dir, output_dir, polygons=True, overwrite=True))
    assert again.predicted == 2 and again.replaced_shapes == 0
    assert output_dir.joinpath("annotations.xml").read_bytes() == before


# --- human work and the tool's own shapes ------------------------------------------------------


EXTRA_LABELS = """<label><name>rail_mid</name><color>#000000</color><type>mask</type><attributes /></label>
        <label><name>toeboard</name><color>#ffffff</color><type>polygon</type><attributes /></label>
      </labels>"""


def _fixture_input(folder: Path) -> Path:
    """The CVAT export fixture (every shape kind, comments, attributes) plus the two barrier labels it
    lacks, one declared as a polygon label, and random pixels for its three images."""
    doc = CvatDocument.load(FIXTURE)
    rng = np.random.default_rng(0)
    for image in doc.images:
        path = folder / "images" / image.name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    text = FIXTURE.read_text(encoding="utf-8").replace("</labels>", EXTRA_LABELS, 1)
    (folder / "annotations.xml").write_text(text, encoding="utf-8")
    return folder


def test_meta_and_every_human_shape_survive_unchanged(predictor, tmp_path):
    input_dir = _fixture_input(tmp_path / "in")
    output_dir = tmp_path / "out"
    summary = label_folder(predictor, options(input_dir, output_dir))
    assert summary.exit_code == 0
    kinds = records(output_dir)["site/b/frame_000000.jpg"].settings["shapes"]
    assert kinds == {"rail_top": "mask", "rail_mid": "mask", "toeboard": "polygon", "vertical_post": "mask"}
    assert summary.shapes.total() > 0
    human = sum(len(image.shapes()) for image in CvatDocument.load(FIXTURE).images)
    assert summary.kept_input_shapes == human and summary.replaced_shapes == 0

    original = ET.parse(input_dir / "annotations.xml").getroot()
    written = ET.parse(output_dir / "annotations.xml").getroot()
    assert ET.tostring(written.find("meta")) == ET.tostring(original.find("meta"))
    assert [e.get("name") for e in written.findall("image")] == [e.get("name") for e in original.findall("image")]
    for before, after in zip(original.findall("image"), written.findall("image"), strict=True):
        added = list(after)[len(before):]
        assert added and all(e.get("source") == "semi-auto" for e in added)
        assert {e.tag for e in added if e.get("label") == "toeboard"} <= {"polygon"}
        for element in added:
            after.remove(element)
        assert canonical(after) == canonical(before)
        for old, new in zip(before, after, strict=True):  # untouched shapes: same serialisation
            old.tail = new.tail = None
            assert ET.tostring(old) == ET.tostring(new)


ATTRIBUTE_SPEC = """<attribute><name>damaged</name><mutable>False</mutable><input_type>checkbox</input_type>
<default_value>false</default_value><values>false\ntrue</values></attribute>"""


def _as_cvat_reexport(path: Path, target: Path) -> dict[str, str]:
    """What a trip through CVAT does to our shapes: source="file", every label attribute written
    with its default value, a mask stored in a wider box. Plus a person's edits to three of ours in
    the first image: one mask repainted, one flagged occluded, one given an attribute value.
    Returns the RLE of each of those four masks."""
    tree = ET.parse(path)
    root = tree.getroot()
    image = root.find("image")
    padded, edited, occluded, flagged = ours = image.findall("mask")[-4:]  # the tool's masks come last
    assert all(element.get("source") == "semi-auto" for element in ours)
    for attributes in root.iter("attributes"):
        attributes.append(ET.fromstring(ATTRIBUTE_SPEC))
    for element in root.iter():
        if element.get("source") is not None:
            element.set("source", "file")
            ET.SubElement(element, "attribute", {"name": "damaged"}).text = "false"
    crop = decode_rle([int(v) for v in padded.get("rle").split(",")], int(padded.get("width")),
                      int(padded.get("height")))
    left, top = int(padded.get("left")), int(padded.get("top"))
    wider = np.pad(crop, ((0, 1), (0, 1)))[: int(image.get("height")) - top, : int(image.get("width")) - left]
    padded.set("rle", ", ".join(map(str, encode_rle(wider))))
    padded.set("width", str(wider.shape[1]))
    padded.set("height", str(wider.shape[0]))
    crop = decode_rle([int(v) for v in edited.get("rle").split(",")], int(edited.get("width")),
                      int(edited.get("height")))
    crop[0, 0] = not crop[0, 0]
    edited.set("rle", ", ".join(map(str, encode_rle(crop))))
    occluded.set("occluded", "1")
    flagged.find("attribute").text = "true"
    tree.write(target, encoding="utf-8", xml_declaration=True)
    return {name: element.get("rle") for name, element in
            (("padded", padded), ("edited", edited), ("occluded", occluded), ("flagged", flagged))}


def _image_element(path: Path, name: str) -> ET.Element:
    return next(e for e in ET.parse(path).getroot().iter("image") if e.get("name") == name)


def test_cvat_reexport_untouched_frames_are_refreshed_reviewed_frames_left_as_they_are(synthetic, predictor, tmp_path):
    input_dir = make_input(synthetic, tmp_path / "in", count=2)
    output_dir = tmp_path / "out"
    first = label_folder(predictor, options(input_dir, output_dir))
    ours_first = {name: len(record.shapes) for name, record in records(output_dir).items()}
    humans = shape_counts(input_dir / "annotations.xml")

    export = make_input(synthetic, tmp_path / "export", count=2)
    changed = _as_cvat_reexport(output_dir / "annotations.xml", export / "annotations.xml")
    exported = shape_counts(export / "annotations.xml")
    reviewed, untouched = (image.name for image in CvatDocument.load(export / "annotations.xml").images)

    for mode in ({"overwrite": False}, {"overwrite": True}):
        again = label_folder(predictor, options(export, output_dir, **mode))
        assert again.left_alone == {"reviewed": [reviewed]} and again.to_json()["reviewed_left_alone"] == 1
        assert shape_counts(output_dir / "annotations.xml") == {
            reviewed: exported[reviewed], untouched: humans[untouched] + ours_first[untouched]}
        assert canonical(_image_element(output_dir / "annotations.xml", reviewed)) == canonical(
            _image_element(export / "annotations.xml", reviewed))  # exactly as the person left it
        assert again.replaced_shapes == ours_first[untouched]  # the untouched frame is refreshed
        assert again.predicted == (1 if mode["overwrite"] else 0)

    # A new output folder has no records: every frame holds uploaded shapes (CVAT marks them "file"),
    # so none is touched; with --records-from the earlier folder, the run is the same as there.
    fresh = label_folder(predictor, options(export, tmp_path / "fresh"))
    assert fresh.left_alone == {"unknown": [reviewed, untouched]} and fresh.predicted == 0
    assert shape_counts(tmp_path / "fresh" / "annotations.xml") == exported
    borrowed = label_folder(predictor, options(export, tmp_path / "borrowed", records_from=output_dir))
    assert borrowed.left_alone == {"reviewed": [reviewed]} and borrowed.predicted == 1
    assert (tmp_path / "borrowed" / "annotations.xml").read_bytes() == (output_dir / "annotations.xml").read_bytes()
    with pytest.raises(FatalInputError, match="records-from"):
        label_folder(predictor, options(export, tmp_path / "x", records_from=tmp_path / "nowhere"))

    # Asked explicitly: the reviewed frame is labelled again; the tool's unchanged shapes (also the one
    # CVAT stored in a wider box) are replaced, the three a person edited are kept as human work.
    again = label_folder(predictor, options(export, output_dir, relabel_reviewed=True))
    assert again.relabelled_reviewed == 1 and not again.left_alone
    for name, count in shape_counts(output_dir / "annotations.xml").items():
        assert count == humans[name] + ours_first[name] + (3 if name == reviewed else 0)
    assert again.replaced_shapes == first.shapes.total() - 3
    rles = [m.element.get("rle") for m in CvatDocument.load(output_dir / "annotations.xml").image(reviewed)
            .masks() if m.source == "file"]
    assert all(changed[edit] in rles for edit in ("edited", "occluded", "flagged"))
    assert changed["padded"] not in rles
    repeated = label_folder(predictor, options(export, output_dir))  # the same export again: nothing new
    assert not repeated.left_alone and repeated.reused == 2
    assert shape_counts(output_dir / "annotations.xml")[reviewed] == humans[reviewed] + ours_first[reviewed] + 3


# --- crash safety ------------------------------------------------------------------------------


class PixelPredictor:
    """A stand-in for the model where only the pipeline is under test: deterministic instances from
    the pixels (bright, dark and reddish regions), at no model cost."""

    class_names = ("rail_top", "rail_mid", "toeboard", "vertical_post")
    score_threshold = 0.5

    def predict_batch(self, images):
        results = []
        for image in images:
            gray = image.mean(axis=2)
            masks = np.stack([gray > 150, gray < 60, image[:, :, 0] > image[:, :, 2] + 20])
            keep = masks.any(axis=(1, 2))
            results.append(Instances.from_masks(masks[keep], np.array([0.9, 0.8, 0.7])[keep],
                                                np.array([0, 2, 3])[keep], self.class_names))
        return results

    def __call__(self, image):
        return self.predict_batch([image])[0]


@pytest.fixture(scope="module")
def reference(synthetic, predictor, tmp_path_factory) -> tuple[Path, bytes]:
    """An uninterrupted run with the tiny model (batch 1, as the SIGKILL test's command line)."""
    root = tmp_path_factory.mktemp("reference")
    input_dir = make_input(synthetic, root / "in", count=4)
    label_folder(predictor, options(input_dir, root / "out", batch_size=1))
    return input_dir, (root / "out" / "annotations.xml").read_bytes()


@pytest.fixture(scope="module")
def pixel_reference(synthetic, tmp_path_factory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("pixel_reference")
    input_dir = make_input(synthetic, root / "in", count=4)
    summary = label_folder(PixelPredictor(), options(input_dir, root / "out", batch_size=1))
    assert summary.shapes.total() >= 8
    return input_dir, (root / "out" / "annotations.xml").read_bytes()


def _crash_on_call(monkeypatch, owner, name: str, call: int) -> None:
    original = getattr(owner, name)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise SimulatedCrash(f"{name} call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, crashing)


def _crash_mid_record_write(monkeypatch) -> None:
    """Dies while the second record is being written: half a temp file, no rename."""
    original = outputs_module.atomic_write_json
    calls = {"n": 0}

    def writing(path, data, **kwargs):
        calls["n"] += 1  # call 1 is run.json
        if calls["n"] == 3:
            Path(path).with_name(f".{Path(path).name}.killed.tmp").write_text(json.dumps(data)[:50])
            raise SimulatedCrash("mid record write")
        return original(path, data, **kwargs)

    monkeypatch.setattr(outputs_module, "atomic_write_json", writing)


CRASH_POINTS = {
    "model": lambda patch: _crash_on_call(patch, PixelPredictor, "predict_batch", 3),
    "after_overlay_before_record": lambda patch: _crash_on_call(patch, outputs_module.OutputFolder,
                                                                "write_record", 3),
    "mid_record_write": _crash_mid_record_write,
    "after_record_before_xml": lambda patch: _crash_on_call(patch, AnnotationMerger, "apply", 3),
    "xml_save": lambda patch: _crash_on_call(patch, CvatDocument, "save", 2),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_resume_after_a_crash_loses_nothing_and_duplicates_nothing(point, pixel_reference, tmp_path, monkeypatch):
    input_dir, expected = pixel_reference
    predictor = PixelPredictor()
    output_dir = tmp_path / "out"
    with monkeypatch.context() as patch:
        CRASH_POINTS[point](patch)
        with pytest.raises(SimulatedCrash):
            label_folder(predictor, options(input_dir, output_dir, batch_size=1))
    done = records(output_dir)
    assert len(done) < 4
    if (output_dir / "annotations.xml").exists():  # an earlier complete state, never half a file
        CvatDocument.load(output_dir / "annotations.xml")

    summary = label_folder(predictor, options(input_dir, output_dir, batch_size=1))
    assert summary.reused == len(done) and summary.predicted == 4 - len(done)
    assert (output_dir / "annotations.xml").read_bytes() == expected
    after = records(output_dir)
    assert all(after[name] == record for name, record in done.items())  # committed work is kept as is


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(reference, weights_file, tmp_path):
    input_dir, expected = reference  # same weights, settings and batch size as this command line
    killed = tmp_path / "killed"
    args = cli_args(input_dir, killed, weights_file, "--batch-size", "1")
    env = {**os.environ, "BARRIER_BACKEND": "torch", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "barrier_annotator.tools.label_images", *args], cwd=REPO_ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any((killed / "predictions").glob("*.json")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    committed = len(list((killed / "predictions").glob("*.json")))
    assert 1 <= committed < 4

    assert label_images.main(args) == 0
    assert (killed / "annotations.xml").read_bytes() == expected
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["reused"] == committed and summary["predicted"] == 4 - committed


# --- resume / overwrite -------------------------------------------------------------------------


def test_resume_reuses_records_and_overwrite_or_new_settings_predict_again(synthetic, predictor, tmp_path):
    input_dir = make_input(synthetic, tmp_path / "in", count=2)
    output_dir = tmp_path / "out"
    first = label_folder(predictor, options(input_dir, output_dir))
    xml = (output_dir / "annotations.xml").read_bytes()
    resumed = label_folder(predictor, options(input_dir, output_dir))
    assert (resumed.predicted, resumed.reused) == (0, 2)
    assert (output_dir / "annotations.xml").read_bytes() == xml
    overwritten = label_folder(predictor, options(input_dir, output_dir, overwrite=True))
    assert (overwritten.predicted, overwritten.reused) == (2, 0)
    assert (output_dir / "annotations.xml").read_bytes() == xml
    assert overwritten.shapes == first.shapes

    scores = sorted(item.score for record in records(output_dir).values() for item in record.instances)
    cut = (scores[0] + scores[-1]) / 2
    stricter = Predictor(predictor.cfg, model=predictor.model, backend="torch", score_threshold=cut)
    changed = label_folder(stricter, options(input_dir, output_dir))
    assert (changed.predicted, changed.reused) == (2, 0)
    assert changed.shapes.total() < first.shapes.total()
    now = records(output_dir)
    assert shape_counts(output_dir / "annotations.xml") == {
        name: count + len(now[name].shapes) for name, count in shape_counts(input_dir / "annotations.xml").items()}


# --- bad inputs ---------------------------------------------------------------------------------


def test_bad_images_are_reported_and_skipped_not_fatal(synthetic, weights_file, tmp_path):
    names = ["good.jpg", "missing.jpg", "corrupt.jpg", "../escape.jpg", "sub/wrong_size.jpg", "/etc/abs.jpg"]
    input_dir = make_input(synthetic, tmp_path / "in", names)
    (input_dir / "images" / "missing.jpg").unlink()
    (input_dir / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    wrong = input_dir / "images" / "sub" / "wrong_size.jpg"
    Image.new("RGB", (7, 5)).save(wrong)
    output_dir = tmp_path / "out"

    assert label_images.main(cli_args(input_dir, output_dir, weights_file)) == 1
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["predicted"] == 1
    assert {reason: [item.split(":")[0] for item in items] for reason, items in summary["skipped"].items()} == {
        "missing": ["missing.jpg"], "unreadable": ["corrupt.jpg"], "size_mismatch": ["sub/wrong_size.jpg"],
        "bad_name": ["../escape.jpg", "/etc/abs.jpg"]}
    assert shape_counts(output_dir / "annotations.xml").keys() == set(names)  # every image is kept
    assert not (tmp_path / "escape.jpg.json").exists() and not (output_dir / "escape.jpg.json").exists()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE annotations [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
]>
<annotations><version>1.1</version><image id="0" name="&f;" width="4" height="4"/></annotations>
"""

VIDEO_EXPORT = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><id>1</id><name>site</name><size>2</size><mode>interpolation</mode>
    <labels><label><name>rail_top</name><color>#fa3253</color><type>any</type><attributes /></label></labels>
    <original_size><width>64</width><height>48</height></original_size></task></meta>
  <track id="0" label="rail_top" source="manual">
    <polygon frame="0" keyframe="1" outside="0" occluded="0" points="1.00,1.00;9.00,1.00;9.00,5.00" z_order="0" />
    <polygon frame="1" keyframe="1" outside="1" occluded="0" points="1.00,1.00;9.00,1.00;9.00,5.00" z_order="0" />
  </track>
</annotations>
"""

BAD_XML = {
    "xml_bomb": (BILLION_LAUGHS, "unsafe"),
    "xxe": (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<annotations><image id="0" name="&x;" width="1" height="1"/></annotations>', "unsafe"),
    "malformed": (b"<annotations><image id='0' name='a.jpg'", "malformed"),
    "not_cvat": (b"<dataset/>", "<dataset>"),
    "absent": (None, "not found"),
    "video_export": (VIDEO_EXPORT, r"'CVAT for video 1\.1' export \(1 <track> element\(s\), no <image>\): export the "
                                   r"task again with format 'CVAT for images 1\.1'"),
    "no_images": (b"<annotations><version>1.1</version><meta><task><labels /></task></meta></annotations>",
                  r"no <image> element, so nothing to label.*'CVAT for images 1\.1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_XML))
def test_unusable_annotation_files_stop_the_run_before_writing(case, predictor, tmp_path):
    data, message = BAD_XML[case]
    input_dir = tmp_path / "in"
    (input_dir / "images").mkdir(parents=True)
    if data is not None:
        (input_dir / "annotations.xml").write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(FatalInputError, match=message) as info:
        label_folder(predictor, options(input_dir, tmp_path / "out"))
    assert time.perf_counter() - started < 2.0
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message
    assert not (tmp_path / "out").exists()


def test_cli_keeps_the_seed_flags_and_resumes_by_default():
    parser = label_images.build_parser()
    args = parser.parse_args(["--input_dir", "in", "--output_dir", "out", "--config-file", "c.yaml",
                              "--confidence-threshold", "0.7", "--batch-size", "8", "--opts", "A.B", "1"])
    assert (args.overwrite, args.confidence_threshold, args.batch_size, args.opts) == (False, 0.7, 8, ["A.B", "1"])
    assert parser.parse_args(["--input-dir", "i", "--output-dir", "o", "--overwrite"]).overwrite is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--input_dir", "i", "--output_dir", "o", "--overwrite", "--resume"])


def test_cli_exit_codes_for_fatal_errors(synthetic, weights_file, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "annotations.xml").write_bytes(BILLION_LAUGHS)
    assert label_images.main(cli_args(tmp_path / "in", tmp_path / "out", weights_file)) == 2
    input_dir = make_input(synthetic, tmp_path / "ok", count=1)
    assert label_images.main(cli_args(input_dir, tmp_path / "out", tmp_path / "no-such.pth")) == 2
    assert label_images.main(cli_args(input_dir, tmp_path / "out", weights_file,
                                      opts=["MODEL.NO_SUCH_KEY", "1"])) == 2
    assert label_images.main(cli_args(input_dir, input_dir, weights_file)) == 2  # would overwrite the input
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "annotations.xml").write_bytes(VIDEO_EXPORT)
    assert label_images.main(cli_args(tmp_path / "video", tmp_path / "out", weights_file)) == 2


# --- small parts --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x.jpg", "a/../../x.jpg", "/abs.jpg", "C:/x.jpg", "a\\..\\x.jpg", "",
                                  "a//b.jpg", "./a.jpg", "a\x00.jpg"])
def test_unsafe_image_names_are_refused(name):
    with pytest.raises(UnsafeImageNameError):
        relative_parts(name)


def test_labels_the_task_lacks_or_cannot_hold_masks_are_not_written():
    doc = CvatDocument.load(FIXTURE)  # rail_top: mask, vertical_post: any, no rail_mid / toeboard
    classes = ("rail_top", "rail_mid", "toeboard", "vertical_post", "worker", "head")
    assert {name: choice.to_json() for name, choice in shape_kinds(doc, classes, polygons=False).items()} == {
        "rail_top": "mask", "rail_mid": "skip: label not in the task", "toeboard": "skip: label not in the task",
        "vertical_post": "mask", "worker": "skip: the task's label type is 'skeleton'",
        "head": "skip: the task's label type is 'points'"}
    assert {name: choice.kind for name, choice in shape_kinds(doc, ("rail_top", "vertical_post"), polygons=True).items()
            } == {"rail_top": "mask", "vertical_post": "polygon"}  # a mask label stays a mask label
    assert shape_kinds(CvatDocument.from_bytes(b"<annotations/>"), ("a",), polygons=False) == {"a": ShapeChoice("mask")}


def test_plain_names_keep_their_sub_folders():
    assert relative_parts("site-a/cam1/0001.jpg") == ("site-a", "cam1", "0001.jpg")
    assert relative_parts("ünï/名前 1.png") == ("ünï", "名前 1.png")


def test_prefetch_keeps_order_and_reports_errors_per_item():
    def load(item: int) -> int:
        if item == 3:
            raise ValueError("bad item")
        time.sleep(0.001 * (10 - item))
        return item * 10

    loaded = list(prefetch(range(10), load, workers=3, ahead=4))
    assert [entry.item for entry in loaded] == list(range(10))
    assert [entry.value for entry in loaded if entry.error is None] == [i * 10 for i in range(10) if i != 3]
    assert isinstance(loaded[3].error, ValueError)


def test_record_json_round_trip(synthetic, predictor, tmp_path):
    input_dir = make_input(synthetic, tmp_path / "in", count=1, label_type="any")
    label_folder(predictor, options(input_dir, tmp_path / "out", polygons=True))
    (record,) = records(tmp_path / "out").values()
    assert PredictionRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


# --- one object per predicted instance, also as polygons (issue 13, item 2) ----------------------


def pieces_masks(height: int = 60, width: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Instances CVAT polygons cannot hold one by one: a rail cut by a post, a slanted rail with
    specks around it, a board with a hole, a one-pixel post; and their class ids."""
    masks = np.zeros((4, height, width), dtype=bool)
    masks[0, 5:9, 2:40] = masks[0, 5:9, 46:94] = True  # rail_top, cut in two by a post
    rows, cols = np.mgrid[0:height, 0:width]
    masks[1] = (np.abs(rows - (20 + cols * 0.15)) < 2.5) & (cols > 4) & (cols < 90)  # slanted rail_mid
    masks[1, 40, 10] = masks[1, 42, 30] = masks[1, 44:46, 50:52] = True  # specks: dropped
    masks[2, 48:56, 10:60] = True  # toeboard with a hole (CVAT polygons have none)
    masks[2, 50:53, 30:40] = False
    masks[3, 58, 90] = True  # a single pixel is still an instance
    return masks, np.array([0, 1, 2, 3])


class PiecesPredictor(PixelPredictor):
    def predict_batch(self, images):
        masks, classes = pieces_masks(*images[0].shape[:2])
        return [Instances.from_masks(masks, np.array([0.9, 0.8, 0.7, 0.6]), classes, self.class_names)
                for _ in images]


def _empty_export(folder: Path, names: list[str], height: int = 60, width: int = 96) -> Path:
    """A task export with label type "any" and no shapes."""
    doc = CvatDocument.new([LabelSpec(name, type="any") for name in PixelPredictor.class_names])
    rng = np.random.default_rng(1)
    for name in names:
        doc.add_image(name, width, height)
        path = folder / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    doc.save(folder / "annotations.xml")
    return folder


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_polygons_read_back_as_exactly_the_predicted_instances(tmp_path):
    """What ``--polygons`` writes, read back by the training loader (and by Datumaro, through which
    CVAT's exports go): one object per predicted instance. The loaded mask is exactly the union of
    the written polygons; against the predicted mask its IoU is >= 0.9 (simplification keeps 0.93
    per piece; specks under 16 px and holes are the rest); rectangles come back pixel-exact."""
    import datumaro as dm

    from barrier_annotator.training.data.cvat_xml import load_cvat_xml

    input_dir = _empty_export(tmp_path / "in", ["a.png", "b/c.png"])
    summary = label_folder(PiecesPredictor(), options(input_dir, tmp_path / "out", polygons=True))
    assert summary.exit_code == 0
    masks, classes = pieces_masks()
    written = records(tmp_path / "out")
    assert [len(i.shapes) for i in written["a.png"].instances] == [2, 1, 1, 1]  # the specks are not written

    loaded, report = load_cvat_xml(tmp_path / "out" / "annotations.xml", input_dir / "images",
                                   PixelPredictor.class_names)
    assert report.total_instances == 2 * len(masks) and not report.skipped_instances
    for record in loaded:
        name = Path(record.file_name).relative_to((input_dir / "images").resolve()).as_posix()
        assert [i.category_id for i in record.instances] == classes.tolist()
        for instance, mask, item in zip(record.instances, masks, written[name].instances, strict=True):
            got = instance.mask.decode(60, 96)
            np.testing.assert_array_equal(got, polygons_to_mask([s.points for s in item.shapes], 60, 96))
            assert _iou(got, mask) >= 0.9
        np.testing.assert_array_equal(record.instances[0].mask.decode(60, 96), masks[0])  # two rectangles
        np.testing.assert_array_equal(record.instances[3].mask.decode(60, 96), masks[3])  # one pixel

    (tmp_path / "out" / "images").symlink_to(input_dir / "images")
    dataset = dm.Dataset.import_from(str(tmp_path / "out" / "annotations.xml"), "cvat")
    for item in dataset:
        polygons = [a for a in item.annotations if a.type == dm.AnnotationType.polygon]
        objects = {(a.label, a.group or -index) for index, a in enumerate(polygons, 1)}
        assert len(polygons) == 5 and len(objects) == len(masks)


# --- a re-run never undoes review (issue 13, item 3) ---------------------------------------------


class OtherPixelPredictor(PixelPredictor):
    """Another "model": different pixels for the same regions, so a re-run changes every prediction."""

    def predict_batch(self, images):
        return super().predict_batch([np.clip(image.astype(np.int16) + 12, 0, 255).astype(np.uint8)
                                      for image in images])


def _cvat_round_trip(written: Path, target: Path, name: str, edit: str | None) -> None:
    """What an upload, a person's edit of frame ``name`` and a new export do to the tool's file: every
    shape comes back with source "file", each frame lists its shapes in another order."""
    tree = ET.parse(written)
    for image in tree.getroot().iter("image"):
        shapes = [child for child in image if child.tag in ("mask", "polygon")]
        ours = [child for child in shapes if child.get("source") == "semi-auto"]
        if image.get("name") == name and edit is not None:
            target_shape = next(e for e in ours if e.get("label") == "rail_top")
            if edit == "deleted":
                shapes.remove(target_shape)
                image.remove(target_shape)
            elif edit == "relabelled":
                target_shape.set("label", "rail_mid")
            elif edit == "moved":
                top, height = int(target_shape.get("top")), int(target_shape.get("height"))
                target_shape.set("top", str(top + 1 if top + height < int(image.get("height")) else top - 1))
            elif edit == "occluded":
                target_shape.set("occluded", "1")
            elif edit == "added":
                ET.SubElement(image, "mask", {"label": "toeboard", "source": "manual", "occluded": "0",
                                              "rle": "0, 4", "left": "1", "top": "1", "width": "2",
                                              "height": "2", "z_order": "0"})
        for child in shapes:
            image.remove(child)
        for child in reversed(shapes):
            image.append(child)
        for child in image:
            child.set("source", "file")
    tree.write(target, encoding="utf-8", xml_declaration=True)


@pytest.mark.parametrize("edit", ["deleted", "relabelled", "moved", "occluded", "added", None])
def test_rerun_leaves_frames_a_person_touched_as_they_are(edit, synthetic, tmp_path):
    input_dir = make_input(synthetic, tmp_path / "in", count=4)
    output_dir = tmp_path / "out"
    label_folder(PixelPredictor(), options(input_dir, output_dir))
    first = records(output_dir)
    touched = next(name for name, record in first.items()
                   if any(shape.label == "rail_top" for shape in record.shapes))
    export = make_input(synthetic, tmp_path / "export", count=4)
    _cvat_round_trip(output_dir / "annotations.xml", export / "annotations.xml", touched, edit)

    rerun = label_folder(OtherPixelPredictor(), options(export, output_dir, model={"weights": "other"}))
    reviewed = [] if edit is None else [touched]
    assert rerun.left_alone == ({"reviewed": reviewed} if reviewed else {})
    assert json.loads((output_dir / "summary.json").read_text())["reviewed_left_alone"] == len(reviewed)
    assert rerun.predicted == 4 - len(reviewed)
    humans = shape_counts(input_dir / "annotations.xml")
    now = records(output_dir)
    for name, count in shape_counts(output_dir / "annotations.xml").items():
        if name in reviewed:  # exactly as the person left it: nothing restored, nothing added
            assert canonical(_image_element(output_dir / "annotations.xml", name)) == canonical(
                _image_element(export / "annotations.xml", name))
            assert now[name] == first[name]
        else:  # untouched: the old predictions are replaced by the new model's
            assert count == humans[name] + len(now[name].shapes)
            assert now[name].settings["model"] == {"weights": "other"}

    forced = label_folder(OtherPixelPredictor(), options(export, output_dir, model={"weights": "other"},
                                                         relabel_reviewed=True))
    assert forced.relabelled_reviewed == len(reviewed) and not forced.left_alone
    if edit == "deleted":  # asked explicitly: the model's shapes go back on the frame
        assert shape_counts(output_dir / "annotations.xml")[touched] == (
            shape_counts(export / "annotations.xml")[touched] - (len(first[touched].shapes) - 1)
            + len(records(output_dir)[touched].shapes))


def test_cvat_renumbering_groups_and_reordering_is_no_review(tmp_path):
    """What CVAT does on its own to grouped polygons (new group numbers, z-order, order, source)
    leaves the frame untouched: it is refreshed, never mistaken for a person's work."""
    input_dir = _empty_export(tmp_path / "in", ["a.png", "b.png"])
    output_dir = tmp_path / "out"
    label_folder(PiecesPredictor(), options(input_dir, output_dir, polygons=True))
    written = shape_counts(output_dir / "annotations.xml")
    tree = ET.parse(output_dir / "annotations.xml")
    for image in tree.getroot().iter("image"):
        shapes = list(image)
        for child in shapes:
            image.remove(child)
        for child in reversed(shapes):
            child.set("source", "file")
            child.set("z_order", "3")
            if child.get("group_id"):
                child.set("group_id", str(int(child.get("group_id")) + 40))
            image.append(child)
    export = _empty_export(tmp_path / "export", ["a.png", "b.png"])
    tree.write(export / "annotations.xml", encoding="utf-8", xml_declaration=True)
    again = label_folder(PiecesPredictor(), options(export, output_dir, polygons=True, model={"weights": "new"}))
    assert not again.left_alone and again.predicted == 2
    assert shape_counts(output_dir / "annotations.xml") == written and again.replaced_shapes == sum(written.values())


def test_an_overlay_that_cannot_be_drawn_costs_the_picture_not_the_annotations(synthetic, tmp_path, monkeypatch,
                                                                              caplog):
    from barrier_annotator.labelling import pipeline

    def broken_drawing(image, instances):
        raise ValueError("drawing bug")

    input_dir = make_input(synthetic, tmp_path / "in", count=3)
    monkeypatch.setattr(pipeline, "draw_instances", broken_drawing)
    summary = label_folder(PixelPredictor(), options(input_dir, tmp_path / "out", batch_size=1))
    assert summary.exit_code == 0 and summary.predicted == 3 and summary.overlays_failed == 3
    assert len(records(tmp_path / "out")) == 3 and summary.shapes.total() > 0
    assert not any(path.is_file() for path in (tmp_path / "out" / "visuals").rglob("*"))
    assert "overlay of" in caplog.text and "drawing bug" in caplog.text
