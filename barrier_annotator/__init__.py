"""barrier-annotator beyond the model: everything that connects Mask2Former to CVAT.

- ``cvat``: the one owner of CVAT's formats (detector and interactor payloads, polygons, XML RLE,
  cvat-sdk shapes, the CVAT for images 1.1 document);
- ``serving``: the model handler behind every CVAT function (Nuclio, ``barrier-serve``, cvat-sdk);
- ``labelling``: offline pre-labelling of a CVAT export (``barrier-label``);
- ``sync``: the CVAT -> finetune -> gate -> redeploy loop (``barrier-sync-train``);
- ``training`` (folder ``training/``): datasets, losses, engine, evaluation (``barrier-train``);
- ``tools`` (folder ``tools/``): the command lines, one module each.

The model itself is the ``mask2former`` package; nothing in it imports from here.
"""
