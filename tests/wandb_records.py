"""Read the records of a W&B offline run file (.wandb), to check what a run really logged.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk with a
7-byte header (crc32c, length, type); FULL/FIRST/MIDDLE/LAST chunks join into protobuf Records.
A chunk cut off by the end of the file (still being written) ends the read.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        block_left = BLOCK - (pos % BLOCK)
        if block_left < 7:  # block trailer padding
            pos += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:  # the writer's last chunk is not on disk yet: stop, as LevelDB does
            break
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pending)
            except DecodeError as err:
                # Seen once in CI and never reproduced: say where, so the next one can be read.
                raise AssertionError(
                    f"{path}: record {len(records)} ending at byte {pos} of {len(data)} "
                    f"(chunk kind {kind}, length {length}, {len(chunk)} bytes read) "
                    f"does not decode: {err}"
                ) from err
            records.append(record)
            pending = b""
    return records


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The run file's records once its exit record is on disk.

    wandb's service writes the file in its own process and may still be flushing it after
    run.finish() returns (CI once read a file that held no history yet), so wait for the last record.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout:.0f} s"
        time.sleep(0.2)


def history_keys(path: Path) -> set[str]:
    keys = set()
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys
