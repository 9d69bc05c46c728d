"""Result records: one JSON file per (protocol, dataset, checkpoint, config); tables are generated from them.

Schema (PROTOCOLS.md A.1), checked by :func:`validate_record` on every write and read::

    schema_version  1
    protocol        e.g. "voc07_svm"           dataset   e.g. "voc07"
    model           row label in the tables (defaults to the checkpoint file name)
    preset          the config preset name (self-describing, e.g. "linear-mhead_resnet50_8xb32-steplr-90e_in1k")
    metrics         {name: float}, in percent where the table shows percent
    details         free-form protocol extras (best layer, grids, per-class values)
    config          the resolved config (dict)                  config_hash   12 hex chars
    checkpoint      {path, sha256, format, arch, encoder}       seeds         {name: int}
    world_size, batch_size_per_device, wall_time_s, git_commit, versions, device, created
    tiny            true when the run used tiny sizes (embedded data): not comparable with published numbers
    rehearsal       true for a rehearsal of a full preset (two optimizer steps, byol_bench.rehearsal): not a result;
                    the tables leave it out

Version 1 records (before ``rehearsal``) are read as version 2 with ``rehearsal: false``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from byol_bench.fileio import atomic_write_json

SCHEMA_VERSION = 2

# field -> accepted python types
SCHEMA: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "protocol": (str,),
    "dataset": (str,),
    "model": (str,),
    "preset": (str,),
    "metrics": (dict,),
    "details": (dict,),
    "config": (dict,),
    "config_hash": (str,),
    "checkpoint": (dict,),
    "seeds": (dict,),
    "world_size": (int,),
    "batch_size_per_device": (int,),
    "wall_time_s": (int, float),
    "git_commit": (str,),
    "versions": (dict,),
    "device": (str,),
    "created": (str,),
    "tiny": (bool,),
    "rehearsal": (bool,),
}
CHECKPOINT_FIELDS = ("path", "sha256", "format", "arch", "encoder")
SOURCE_FIELDS = ("ref", "version", "table")  # details.source of a published record (checkpoint format "published")


class RecordError(ValueError):
    """A result record does not follow the schema; the message names the file and the field."""


# Generic checkpoint file names that say nothing about the model: the folder name labels the row instead.
_GENERIC_STEMS = {"final", "latest", "checkpoint", "model", "last", "best"}


def model_label(ckpt_path: str | os.PathLike) -> str:
    """Row label for a checkpoint: its file stem, or its folder name when the stem is generic (``final.pth``)."""
    path = Path(ckpt_path)
    return path.parent.name if path.stem in _GENERIC_STEMS and path.parent.name else path.stem


def make_record(*, protocol: str, dataset: str, model: str, preset: str, metrics: dict[str, float],
                config: dict[str, Any], config_hash: str, checkpoint: dict[str, str], seeds: dict[str, int],
                batch_size_per_device: int, wall_time_s: float, provenance: dict[str, Any], tiny: bool,
                rehearsal: bool = False, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble and validate a record (``provenance`` comes from :func:`byol_bench.runlog.provenance`)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "protocol": protocol,
        "dataset": dataset,
        "model": model,
        "preset": preset,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "details": details or {},
        "config": config,
        "config_hash": config_hash,
        "checkpoint": checkpoint,
        "seeds": seeds,
        "world_size": int(provenance["world_size"]),
        "batch_size_per_device": int(batch_size_per_device),
        "wall_time_s": round(float(wall_time_s), 3),
        "git_commit": provenance["git_commit"],
        "versions": provenance["versions"],
        "device": provenance["device"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tiny": tiny,
        "rehearsal": rehearsal,
    }
    validate_record(record)
    return record


def validate_record(record: Any, source: str = "record") -> None:
    """Raise :class:`RecordError` unless ``record`` follows the schema exactly (no missing or extra fields)."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: a record must be a JSON object")
    missing = sorted(set(SCHEMA) - set(record))
    extra = sorted(set(record) - set(SCHEMA))
    if missing or extra:
        raise RecordError(f"{source}: missing fields {missing}, unknown fields {extra}")
    for field, types in SCHEMA.items():
        value = record[field]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise RecordError(f"{source}: field {field!r} must be {'/'.join(t.__name__ for t in types)}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{source}: schema_version {record['schema_version']} != {SCHEMA_VERSION}")
    for name, value in record["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(f"{source}: metric {name!r} must be a finite number, got {value!r}")
    missing_ckpt = [k for k in CHECKPOINT_FIELDS if not isinstance(record["checkpoint"].get(k), str)]
    if missing_ckpt:
        raise RecordError(f"{source}: checkpoint is missing {missing_ckpt}")
    if record["checkpoint"]["format"] == "published":  # a number read from a paper or model zoo: say where
        cited = record["details"].get("source")
        if not isinstance(cited, dict) or not all(isinstance(cited.get(k), str) and cited[k] for k in SOURCE_FIELDS):
            raise RecordError(f"{source}: a published record needs details.source with {list(SOURCE_FIELDS)} "
                              "(paper or page, version, table)")


def record_path(records_dir: str | os.PathLike, protocol: str, dataset: str, ckpt_sha256: str,
                config_hash: str) -> Path:
    """Where the record of this (protocol, dataset, checkpoint, config) lives: its identity is its file name."""
    return Path(records_dir) / f"{protocol}_{dataset}_{ckpt_sha256[:12]}_{config_hash}.json"


def write_record(record: dict[str, Any], records_dir: str | os.PathLike) -> Path:
    """Validate and write ``record`` atomically; return its path."""
    validate_record(record)
    path = record_path(records_dir, record["protocol"], record["dataset"], record["checkpoint"]["sha256"],
                       record["config_hash"])
    return atomic_write_json(path, record)


def find_record(records_dir: str | os.PathLike, protocol: str, dataset: str, ckpt_sha256: str,
                config_hash: str) -> Path | None:
    """The existing valid record for this identity, if any (lets reruns skip finished work)."""
    path = record_path(records_dir, protocol, dataset, ckpt_sha256, config_hash)
    if not path.is_file():
        return None
    try:
        read_record(path)
    except RecordError:
        return None  # a corrupt record is redone, never trusted
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one record file."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: unreadable record ({exc})") from None
    record = _upgrade(record)
    validate_record(record, str(path))
    return record


def _upgrade(record: Any) -> Any:
    """A version 1 record as version 2: it predates rehearsals, so it is none."""
    if isinstance(record, dict) and record.get("schema_version") == 1 and "rehearsal" not in record:
        return {**record, "schema_version": 2, "rehearsal": False}
    return record


def load_records(records_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records under ``records_dir`` (recursively), sorted by file name; other JSON files there are left alone.

    A records folder also holds the files that belong to a record, written next to it (COCO detections
    ``<record stem>.bbox.json``, ...), and whatever a user drops there. A ``*.json`` is a record when it holds a
    JSON object with a ``schema_version`` field (or both ``protocol`` and ``metrics``); that one must then be valid.
    Chosen over the file name (``<protocol>_<dataset>_<sha12>_<hash>.json``): a record keeps its identity in its
    fields when it is copied or renamed (``results/published/`` names its files by model), so none drops out of the
    tables unseen, while a non-record is skipped whatever it is called.

    Raises:
        RecordError: the folder is missing, a record in it breaks the schema, or a file that starts as a JSON object
            is not valid JSON (it may be a damaged record: never skipped unseen).
    """
    folder = Path(records_dir)
    if not folder.is_dir():
        raise RecordError(f"{folder}: records folder not found; pass the folder the runners wrote (--out)/records")
    records = []
    for path in sorted(folder.rglob("*.json")):
        record = _read_if_record(path)
        if record is not None:
            records.append(record)
    return records


def _read_if_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The validated record in ``path``; None for a JSON file that is no record (an array, an object with none of
    the record's marks). An array is recognised from its first byte, so a large results file is never parsed."""
    try:
        with open(path, "rb") as handle:
            head = b""
            while not head.strip():  # up to the first byte that is not whitespace
                chunk = handle.read(4096)
                if not chunk:
                    return None  # empty
                head += chunk
            if not head.lstrip().startswith(b"{"):
                return None  # a JSON array (COCO results) or a scalar: never a record
            data = json.loads((head + handle.read()).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: unreadable record ({exc})") from None
    if not isinstance(data, dict) or not ("schema_version" in data or {"protocol", "metrics"} <= set(data)):
        return None  # an object that does not claim to be a record (a hand-damaged record still does: it fails)
    data = _upgrade(data)
    validate_record(data, str(path))
    return data
