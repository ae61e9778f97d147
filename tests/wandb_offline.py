"""Read wandb's offline run files (run-<id>.wandb) back, for tests that check what a run logged.

wandb 0.31 ships no Python reader, so this follows the file layout: a 7-byte header (b":W&B",
magic 0xBEE1 little-endian, version 0), then LevelDB-log framing in 32 KiB blocks — chunks of
(crc32 of type+payload, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) — whose joined
payloads are protobuf `Record`s from wandb.proto.wandb_internal_pb2.
"""

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise ValueError(f"{path} is not a wandb run file (header {data[:7]!r})")
    records, pending, pos = [], b"", 7
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:
            break
        payload = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos += _CHUNK_HEADER + length
        pending = payload if kind in (_FULL, _FIRST) else pending + payload
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def run_files(run_dir: Path) -> list[Path]:
    """Every offline run file of a LiteGen run directory, oldest first."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def of_type(records: list[pb.Record], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records: list[pb.Record]) -> list[dict[str, Any]]:
    """One dict per logged step: {"loss": 1.2, "_step": 3, "sample": {...}, ...}."""
    rows = []
    for h in of_type(records, "history"):
        rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in h.item})
    return rows


def config(records: list[pb.Record]) -> dict[str, Any]:
    """The run config as logged with the run record, {"optim": {"lr": ...}, ...}."""
    run = of_type(records, "run")[0]
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def run_id(records: list[pb.Record]) -> str:
    return of_type(records, "run")[0].run_id
