"""Creates the CVAT task holding the chosen frames, pre-labelled, with cvat-sdk 2.80.

Three steps, each recorded (``on_step``) so an interrupted creation continues instead of leaving a
second task behind: create the task (in the project, or with the source task's labels when there
is none), upload the frames (``Task.upload_data``: CVAT keeps the files' bytes, frames sorted by
name), then the pre-labels through the annotations API as JSON shapes with ``source="semi-auto"``
(a "CVAT 1.1" file import would store every shape as ``source="file"``, hiding that they are the
model's). The shapes go in one ``PUT`` that replaces the task's annotations, so a retry after a lost
answer never doubles them. A task whose frames did not arrive is deleted before a retry creates it
again; a task with its frames only needs the annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cvat_sdk.api_client import models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.client import Client
from cvat_sdk.core.exceptions import CvatSdkException
from cvat_sdk.core.proxies.tasks import ResourceType

from ..cvat import CvatDocument, LabelInfo, sdk_mask_points
from ..sync.cvat_client import CvatError
from ..sync.retry import describe_error
from .prelabels import StagedTask

logger = logging.getLogger(__name__)

PRELABEL_SOURCE = "semi-auto"
"""The ``source`` of the model's shapes: what CVAT's own interactive tools write, so annotators and
reports can tell pre-labels from their own drawing (and the sync loop can, too)."""


def _label_requests(labels: Sequence[LabelInfo]) -> list[models.PatchedLabelRequest]:
    return [models.PatchedLabelRequest(name=label.name, type=label.type or "any",
                                       **({"color": label.color} if label.color else {})) for label in labels]


def create_prelabelled_task(client: Client, staged: StagedTask, *, name: str, project_id: int | None,
                            labels: Sequence[LabelInfo] = (), state: Mapping[str, Any] | None = None,
                            on_step: Callable[[dict[str, Any]], None] = lambda step: None) -> dict[str, Any]:
    """Create (or finish creating, from ``state``) the task; returns its final state ``{"status":
    "created", "id", "name", "frames", "shapes"}``."""
    current = dict(state or {})
    try:
        if current.get("id") is not None and current.get("status") == "created_empty":
            _delete_quietly(client, int(current["id"]))
            current = {}
        if current.get("id") is None:
            spec = models.TaskWriteRequest(name=name, **({"project_id": project_id} if project_id is not None else
                                                         {"labels": _label_requests(labels)}))
            task = client.tasks.create(spec)
            current = {"status": "created_empty", "id": int(task.id), "name": name, "project_id": project_id}
            on_step(current)
            logger.info("created CVAT task %d %r%s", task.id, name,
                        f" in project {project_id}" if project_id is not None else "")
            task.upload_data([str(path) for path in staged.images], resource_type=ResourceType.LOCAL,
                             params={"image_quality": 95, "sorting_method": "lexicographical"})
            if task.size != len(staged.images):
                raise CvatError(f"task {task.id} holds {task.size} frames after the upload, expected "
                                f"{len(staged.images)}")
            current = {**current, "status": "frames_uploaded", "frames": len(staged.images)}
            on_step(current)
        task = client.tasks.retrieve(int(current["id"]))
        shapes = prelabel_shapes(staged, [frame.name for frame in task.get_frames_info()],
                                 {label.name: int(label.id) for label in task.get_labels()})
        task.set_annotations(models.LabeledDataRequest(shapes=shapes))
        current = {**current, "status": "created", "shapes": len(shapes)}
        on_step(current)
        logger.info("task %d: %d frames, %d pre-labelled shapes uploaded", task.id, len(staged.images), staged.shapes)
        return current
    except ApiException as error:
        raise CvatError(f"creating task {name!r}: {describe_error(error)}; rerun with the same --create-task to "
                        f"finish it (state: {current.get('status', 'not created')})") from None
    except CvatSdkException as error:
        raise CvatError(f"creating task {name!r}: {error}; rerun with the same --create-task to finish it") from None


def prelabel_shapes(staged: StagedTask, frame_names: Sequence[str], label_ids: Mapping[str, int]
                    ) -> list[models.LabeledShapeRequest]:
    """The staged pre-labels as CVAT JSON shapes for the task whose frames are ``frame_names`` (in
    task order): masks as CVAT RLE + inclusive box, polygons as flat points, groups kept."""
    staged_names = sorted(path.name for path in staged.images)
    if sorted(frame_names) != staged_names:
        missing = sorted(set(staged_names) - set(frame_names))
        extra = sorted(set(frame_names) - set(staged_names))
        raise CvatError(f"the task's frames are not the chosen ones (missing {missing[:5]}, unexpected {extra[:5]})")
    frame_of = {name: index for index, name in enumerate(frame_names)}
    shapes = []
    for image in CvatDocument.load(staged.annotations).images:
        for shape in image.shapes():
            if shape.label not in label_ids:
                raise CvatError(f"label {shape.label!r} of the pre-labels is not a label of the task")
            if shape.kind == "mask":
                points = [float(v) for v in sdk_mask_points(shape.counts, shape.box)]
            elif shape.kind == "polygon":
                points = [float(v) for v in shape.points]
            else:
                continue
            shapes.append(models.LabeledShapeRequest(
                type=models.ShapeType(shape.kind), label_id=label_ids[shape.label], frame=frame_of[image.name],
                points=points, source=PRELABEL_SOURCE, occluded=shape.occluded, z_order=shape.z_order,
                group=shape.group_id or 0, attributes=[]))
    return shapes


def _delete_quietly(client: Client, task_id: int) -> None:
    """Remove a task whose frames never arrived (best effort: it may be gone already)."""
    try:
        client.tasks.retrieve(task_id).remove()
        logger.warning("deleted task %d: its frames had not been uploaded; creating it again", task_id)
    except ApiException as error:
        logger.warning("could not delete the incomplete task %d (%s); creating a new one", task_id,
                       describe_error(error))
