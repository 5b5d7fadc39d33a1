"""The canonical annotation digest (barrier_annotator/sync/digest.py) and the manifest upgrade that adopts it.

Equal for every export of the same annotations (a real CVAT re-export reorders shapes, rewrites
``source``, renumbers groups, formats numbers its own way, stores masks in larger boxes);
different as soon as a pixel, label, attribute, occlusion or grouping changes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from barrier_annotator.cvat import CvatDocument, encode_rle
from barrier_annotator.sync.cvat_client import JobInfo
from barrier_annotator.sync.dataset_store import DatasetStore
from barrier_annotator.sync.digest import DIGEST_VERSION, document_digests, image_digest
from tests.cvat_fake_server import export_zip, reordered

META = """<version>1.1</version><meta><task><labels>
<label><name>rail_top</name><type>any</type><attributes>
  <attribute><name>height_cm</name><input_type>number</input_type><default_value>0</default_value></attribute>
  <attribute><name>note</name><input_type>text</input_type><default_value></default_value></attribute>
</attributes></label>
<label><name>rail_mid</name><type>any</type><attributes/></label>
</labels></task></meta>"""

PIXELS = np.zeros((3, 4), dtype=bool)
PIXELS[0, 1:3] = PIXELS[1, :] = PIXELS[2, 0] = True  # tight: touches every side of its 4x3 box


def rle(mask: np.ndarray) -> str:
    return ", ".join(str(v) for v in encode_rle(mask))


def mask_xml(pixels: np.ndarray = PIXELS, left: int = 2, top: int = 1, *, pad: int = 0, extra: str = "",
             attributes: str = '<attribute name="height_cm">10</attribute><attribute name="note">x</attribute>'
             ) -> str:
    """A rail_top mask; ``pad`` stores it in a box larger by ``pad`` pixels on every side, as CVAT may."""
    crop = np.pad(pixels, pad)
    return (f'<mask label="rail_top" source="manual" occluded="0" rle="{rle(crop)}" left="{left - pad}" '
            f'top="{top - pad}" width="{crop.shape[1]}" height="{crop.shape[0]}" z_order="0"{extra}>'
            f"{attributes}</mask>")


def polygon_xml(points: str = "1.00,1.00;5.00,1.00;5.00,4.00", group: str = ' group_id="3"', extra: str = "") -> str:
    return f'<polygon label="rail_mid" source="manual" occluded="0" points="{points}" z_order="1"{group}{extra}/>'


SECOND = '<polygon label="rail_mid" source="manual" occluded="0" points="10.00,1.00;15.00,1.00;15.00,4.00" ' \
         'z_order="0" group_id="3"/>'
BOX = '<box label="rail_mid" source="auto" occluded="0" xtl="1.50" ytl="2.00" xbr="8.00" ybr="9.00" z_order="0"/>'


def digest(*shapes: str, image_id: int = 0, width: int = 20) -> str:
    document = CvatDocument.from_bytes(
        f'<annotations>{META}<image id="{image_id}" name="a.jpg" width="{width}" height="10">{"".join(shapes)}'
        f"</image></annotations>".encode())
    return image_digest(document.image("a.jpg"))


REFERENCE = (mask_xml(), polygon_xml(), SECOND, BOX)


@pytest.mark.parametrize("variant", [
    pytest.param((BOX, SECOND, polygon_xml(), mask_xml()), id="shape order"),
    pytest.param((mask_xml(attributes='<attribute name="note">x</attribute><attribute name="height_cm">10.00'
                           '</attribute>'), *REFERENCE[1:]), id="attribute order and number format"),
    pytest.param((mask_xml(pad=1), *REFERENCE[1:]), id="mask stored in a larger box"),
    pytest.param((mask_xml(), polygon_xml("1,1;5,1;5.0,4.000"), SECOND, BOX), id="coordinate format"),
    pytest.param(tuple(s.replace('source="manual"', 'source="file"').replace('z_order="1"', 'z_order="5"')
                       for s in REFERENCE), id="source and z_order rewritten"),
    pytest.param(tuple(s.replace('group_id="3"', 'group_id="8"') for s in REFERENCE), id="group renumbered"),
])
def test_every_export_of_the_same_annotations_has_one_digest(variant):
    assert digest(*variant) == digest(*REFERENCE)
    assert digest(*REFERENCE, image_id=7) == digest(*REFERENCE)  # CVAT's image ids do not count


FLIPPED = PIXELS.copy()
FLIPPED[1, 2] = False


@pytest.mark.parametrize("variant", [
    pytest.param((mask_xml(FLIPPED), *REFERENCE[1:]), id="one pixel"),
    pytest.param((mask_xml(left=3), *REFERENCE[1:]), id="mask moved"),
    pytest.param((mask_xml().replace('label="rail_top"', 'label="rail_mid"'), *REFERENCE[1:]), id="label"),
    pytest.param((mask_xml(attributes='<attribute name="height_cm">11</attribute><attribute name="note">x'
                           '</attribute>'), *REFERENCE[1:]), id="attribute value"),
    pytest.param((mask_xml().replace('occluded="0"', 'occluded="1"'), *REFERENCE[1:]), id="occluded"),
    pytest.param((mask_xml(), polygon_xml("1.00,1.00;5.00,1.00;5.00,4.01"), SECOND, BOX), id="vertex"),
    pytest.param((mask_xml(), polygon_xml(group=""), SECOND, BOX), id="ungrouped"),
    pytest.param((mask_xml(), polygon_xml(), SECOND.replace('group_id="3"', 'group_id="4"'), BOX),
                 id="split group"),
    pytest.param((mask_xml(), polygon_xml(group=' group_id="3"'), SECOND.replace('group_id="3"', ''),
                  BOX.replace("/>", ' group_id="3"/>')), id="other group member"),
    pytest.param(REFERENCE[:3], id="shape deleted"),
    pytest.param((*REFERENCE, BOX), id="shape duplicated"),
    pytest.param((*REFERENCE[:3], BOX.replace('xbr="8.00"', 'xbr="8.50"')), id="box edge"),
    pytest.param((*REFERENCE[:3], BOX.replace("/>", ' rotation="10.00"/>')), id="box rotated"),
])
def test_any_change_of_information_changes_the_digest(variant):
    assert digest(*variant) != digest(*REFERENCE)


def test_the_image_size_counts():
    assert digest(*REFERENCE, width=21) != digest(*REFERENCE)


def test_a_broken_mask_names_its_image():
    from barrier_annotator.cvat import CvatXmlError

    broken = mask_xml().replace(f'rle="{rle(PIXELS)}"', 'rle="1, 2"')
    with pytest.raises(CvatXmlError, match=r"a\.jpg"):
        digest(broken)


# ---------------------------------------------------------------- the manifest upgrade
JOB = JobInfo(id=5, task_id=2, task_name="site", project_id=1, stage="acceptance", state="completed",
              updated_date="2026-01-01T00:00:00+00:00", start_frame=0, stop_frame=1)


def job_export(shapes: dict[str, str]) -> bytes:
    images = "".join(f'<image id="{i}" name="{name}" width="20" height="10">{xml}</image>'
                     for i, (name, xml) in enumerate(shapes.items()))
    xml = f"<annotations>{META}{images}</annotations>".encode()
    return export_zip(xml, {name: name.encode() * 10 for name in shapes})


def version_1_digest(image) -> str:
    """How manifest version 1 hashed an image: each shape's XML as written, in document order."""
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    for shape in image.shapes():
        clone = copy.copy(shape.element)
        clone.tail = None
        digest.update(ET.tostring(clone, encoding="utf-8"))
    return digest.hexdigest()


def version_1_store(tmp_path: Path, export: bytes) -> Path:
    """A dataset as the previous release left it: ingested, sealed, digests of version 1."""
    archive = tmp_path / "job.zip"
    archive.write_bytes(export)
    store = DatasetStore(tmp_path / "dataset")
    store.ingest(JOB, archive, 20)
    store.seal_round()
    manifest = json.loads(store.path.read_text())
    source = CvatDocument.load(store.root / manifest["jobs"]["5"]["source"])
    for entry in manifest["images"].values():
        entry["annotations_sha256"] = version_1_digest(source.image(entry["frame"]))
    manifest["version"] = 1
    del manifest["digest_version"], manifest["selection"]
    store.path.write_text(json.dumps(manifest))
    return archive


def test_an_upgraded_manifest_sees_no_change_in_a_reordered_reexport(tmp_path):
    export = job_export({"a.jpg": "".join(REFERENCE), "b.jpg": mask_xml() + BOX})
    archive = version_1_store(tmp_path, export)
    store = DatasetStore(tmp_path / "dataset")
    assert store.manifest["digest_version"] == DIGEST_VERSION and store.manifest["version"] == 2
    source = CvatDocument.load(store.root / store.manifest["jobs"]["5"]["source"])
    assert {e["frame"]: e["annotations_sha256"] for e in store.manifest["images"].values()} == \
        document_digests(source)
    archive.write_bytes(reordered(export, 3))  # the real server's re-export after an undone edit
    result = store.ingest(JOB, archive, 20)
    assert (result.new, result.changed, result.removed) == (0, 0, 0)
    assert not store.has_pending_changes() and store.seal_round() is None
    archive.write_bytes(job_export({"a.jpg": "".join(REFERENCE[:3]), "b.jpg": mask_xml() + BOX}))
    assert DatasetStore(tmp_path / "dataset").ingest(JOB, archive, 20).changed == 1  # a real edit still counts


def test_an_upgrade_without_the_sources_adopts_new_digests_without_a_round(tmp_path, caplog):
    export = job_export({"a.jpg": "".join(REFERENCE)})
    archive = version_1_store(tmp_path, export)
    for source in (tmp_path / "dataset" / "sources").rglob("*.xml"):
        source.unlink()
    store = DatasetStore(tmp_path / "dataset")
    assert store.manifest["images"]["task_2/a.jpg"]["annotations_legacy"] is True
    assert "cannot recompute annotation digests" in caplog.text
    archive.write_bytes(reordered(export, 1))
    assert store.ingest(JOB, archive, 20).changed == 0 and not store.has_pending_changes()
    entry = DatasetStore(tmp_path / "dataset").manifest["images"]["task_2/a.jpg"]
    assert "annotations_legacy" not in entry and entry["annotations_sha256"] == digest(*REFERENCE)
