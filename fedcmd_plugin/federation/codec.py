"""A safe wire format for tensors + JSON metadata: what crosses ranks and gRPC is never unpickled.

Layout: 8-byte little-endian header length, a JSON header {"meta": ..., "tensors": [[name, dtype, shape], ...]},
then the raw tensor bytes in header order. Only whitelisted dtypes decode.
"""
import json
import struct

import numpy as np
import torch

from fedcmd_plugin.errors import PluginError

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 64 * 1024 * 1024


class CodecError(PluginError):
    """A payload that is not a well-formed tensor archive."""


def encode(tensors, meta=None):
    """bytes holding `tensors` (name -> Tensor) and JSON-serialisable `meta`."""
    entries, blobs = [], []
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in NAMES:
            raise CodecError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        entries.append([name, NAMES[tensor.dtype], list(tensor.shape)])
        # reshape(-1): a 0-dim tensor (e.g. BatchNorm's num_batches_tracked) cannot be viewed as bytes itself
        blobs.append(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    header = json.dumps({"meta": meta or {}, "tensors": entries}).encode()
    return b"".join([struct.pack("<Q", len(header)), header, *blobs])


def decode(payload):
    """(tensors, meta) from `encode`'s bytes; raises CodecError for anything malformed."""
    payload = memoryview(bytes(payload))
    if len(payload) < 8:
        raise CodecError("payload shorter than its header")
    (size,) = struct.unpack("<Q", payload[:8])
    if size > MAX_HEADER or 8 + size > len(payload):
        raise CodecError("payload header length is out of range")
    try:
        header = json.loads(bytes(payload[8:8 + size]))
        entries, meta = header["tensors"], header["meta"]
    except (ValueError, KeyError, TypeError):
        raise CodecError("payload header is not valid JSON of the expected shape") from None
    offset, tensors = 8 + size, {}
    for entry in entries:
        try:
            name, dtype_name, shape = entry
            dtype = DTYPES[dtype_name]
            count = int(np.prod(shape)) if shape else 1
        except (ValueError, KeyError, TypeError):
            raise CodecError(f"payload tensor entry {entry!r} is malformed") from None
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        if offset + nbytes > len(payload):
            raise CodecError(f"payload ends inside tensor {name!r}")
        raw = torch.frombuffer(bytearray(payload[offset:offset + nbytes]), dtype=torch.uint8) if nbytes else \
            torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
        offset += nbytes
    if offset != len(payload):
        raise CodecError("payload has trailing bytes")
    return tensors, meta
