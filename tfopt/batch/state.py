"""OUT/.batch/<name>.json: what the last conversion of each model was, the record that
decides on a resume whether a model is up to date. Written by whoever finishes a job first
(the worker, right after publishing; then the batch), each write atomic, so that a batch
or a worker killed at any instant leaves a complete record or the previous one."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATE_DIR = ".batch"


def record_state(out: Path, record: dict) -> dict:
    """Write the record with its finished_at; returns what was written."""
    directory = out / STATE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{record['name']}.json"
    partial = directory / f".{record['name']}.{os.getpid()}.tmp"
    record = dict(record, finished_at=time.time())
    partial.write_text(json.dumps(record, default=str))
    os.replace(partial, final)
    return record


def read_state(out: Path, name: str) -> dict | None:
    try:
        return json.loads((out / STATE_DIR / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
