"""Read back what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file and its media files.

The ``.wandb`` file is a LevelDB-style log (7-byte ``:W&B`` header, 32 KiB blocks, records with a 7-byte
``crc32 / length / type`` header, types FULL=1, FIRST=2, MIDDLE=3, LAST=4) of ``wandb.proto`` ``Record`` messages.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768


def _chunks(data: bytes):
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", ident
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def _nest(items) -> dict[str, Any]:
    """History/config items -> {top-level key: value}; nested keys (``bb/layers`` + ``path``) become dicts."""
    out: dict[str, Any] = {}
    for item in items:
        keys = list(item.nested_key) if item.nested_key else [item.key]
        value = json.loads(item.value_json)
        # W&B splits media dicts into nested keys: the first element is the logged name (which may contain "/")
        d = out
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return out


@dataclass
class OfflineRun:
    directory: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    #: custom chart panels (``wandb.plot.*``) by logged key, from the run config's ``_wandb.visualize``
    panels: dict[str, Any] = field(default_factory=dict)

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def media(self, ref: dict[str, Any]) -> Path:
        return self.directory / "files" / ref["path"]


def _records(wandb_file: Path, timeout: float) -> list[Any]:
    """Every record, once the file is complete: W&B's service process may still be writing its last block after
    ``wandb.finish()`` returns, so wait (up to ``timeout`` s) for the final ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for chunk in _chunks(wandb_file.read_bytes()):
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_offline_run(save_dir: Path, timeout: float = 60.0) -> OfflineRun:
    (run_dir,) = sorted((Path(save_dir) / "wandb").glob("offline-run-*"))
    (wandb_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(run_dir)
    for record in _records(wandb_file, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append(_nest(record.history.item))
        elif kind == "config":
            for item in record.config.update:
                if item.nested_key[:2] == ["_wandb", "visualize"]:
                    run.panels["/".join(item.nested_key[2:])] = json.loads(item.value_json)
                    continue
                if item.nested_key and item.nested_key[0] == "_wandb":
                    continue
                run.config.update(_nest([item]))
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run
