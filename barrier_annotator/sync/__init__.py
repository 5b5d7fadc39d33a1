"""Sync-and-train: CVAT corrections -> versioned dataset -> finetuned model -> quality gate -> redeploy.

One module per job, composed by :mod:`barrier_annotator.sync.loop` (and the thin CLI
``tools/sync_and_train.py``):

- ``redact``: keeps the CVAT token / password out of every log line and message.
- ``retry``: one retry policy (exponential backoff, bounded) for every CVAT call.
- ``cvat_client``: credentials, connection, selection of finished jobs.
- ``export``: CVAT 1.1 export with images: request, poll, download to staging, validate.
- ``digest``: the canonical annotation digest (the same for every CVAT export of the same annotations).
- ``dataset_store``: the versioned local dataset (manifest, content hashes, split by hash, rounds,
  jobs withdrawn when they leave the selection).
- ``trainer``: the adapter over :mod:`barrier_annotator.training.engine` (finetune, evaluate).
- ``gate``: candidate vs deployed metrics -> deploy or not, with reasons (never a model with AP 0).
- ``deploy``: package weights + config, the ``deploy.sh`` command, ``deployed.json``.
- ``run_state``: per-run step record for ``--resume``; the workdir lock.
- ``report``: Markdown + JSON + per-class AP plot.
"""
