"""Atomic file writes: a reader never sees a half-written metrics file or checkpoint."""
import csv
import io
import json
import os
import tempfile
from pathlib import Path


def write_bytes(path, data, durable=False):
    """Write to a temporary file beside `path`, then rename it over `path`. `durable`: the bytes and the rename
    are on disk (fsync) before this returns, so not even a power cut leaves `path` half-written (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def temporary_prefix(path):
    """The name prefix of `write_bytes`' temporary files for `path` (left behind only by a killed writer)."""
    return f".{Path(path).name}."


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_csv(path, rows):
    """Rows (dicts) as CSV; the header is the union of keys in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_torch(path, obj):
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
