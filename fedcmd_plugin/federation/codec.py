"""A safe wire format for tensors + JSON metadata: what crosses ranks and gRPC is never unpickled.

Layout: 8-byte little-endian header length, a JSON header {"meta": {...}, "tensors": [[name, dtype, shape], ...]},
then the raw tensor bytes in header order. Only whitelisted dtypes decode. Every malformed header (bad JSON,
nesting deeper than MAX_DEPTH, unknown dtypes, shapes that are not lists of non-negative integers, sizes that
do not add up to the payload's length) is a CodecError before any tensor memory is allocated.
"""
import json
import math
import struct

import torch

from fedcmd_plugin.errors import PluginError

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
ITEM_BYTES = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in DTYPES.items()}
MAX_HEADER = 16 * 1024 * 1024
MAX_DEPTH = 32  # JSON nesting of the header (meta included); the plugin's own headers need 4
MAX_DIMS = 32
MAX_DIM = 2 ** 31  # no dimension of a real tensor comes near; keeps empty tensors' shapes in range


class CodecError(PluginError):
    """A payload that is not a well-formed tensor archive."""


def encode(tensors, meta=None):
    """bytes holding `tensors` (name -> Tensor) and JSON-serialisable `meta` (a dict)."""
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


def read_header(payload):
    """(entries, meta) of a payload without reading its tensors: entries are (name, dtype name, shape), and
    their sizes are checked to add up to the payload's length exactly."""
    payload = memoryview(payload)
    if len(payload) < 8:
        raise CodecError("payload shorter than its header")
    (size,) = struct.unpack("<Q", payload[:8])
    if size > MAX_HEADER or 8 + size > len(payload):
        raise CodecError("payload header length is out of range")
    try:
        header = json.loads(bytes(payload[8:8 + size]))
    except (ValueError, RecursionError):
        raise CodecError("payload header is not valid JSON") from None
    check_depth(header)
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) or \
            not isinstance(header.get("tensors"), list):
        raise CodecError("payload header must be an object with a 'meta' object and a 'tensors' list")
    entries, names, end = [], set(), 8 + size
    for entry in header["tensors"]:
        name, dtype_name, shape = check_entry(entry)
        if name in names:
            raise CodecError(f"payload names tensor {name!r} twice")
        names.add(name)
        entries.append((name, dtype_name, shape))
        end += math.prod(shape) * ITEM_BYTES[dtype_name]
    if end != len(payload):
        raise CodecError(f"payload is {len(payload)} bytes but its header describes {end}")
    return entries, header["meta"]


def check_depth(obj):
    """CodecError when JSON `obj` nests deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CodecError(f"payload header nests deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def check_entry(entry):
    """(name, dtype name, shape) of one header entry; CodecError naming what is wrong."""
    if not isinstance(entry, list) or len(entry) != 3:
        raise CodecError("payload tensor entry is not [name, dtype, shape]")
    name, dtype_name, shape = entry
    if not isinstance(name, str):
        raise CodecError("payload tensor name is not a string")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise CodecError(f"payload tensor {name!r} has an unsupported dtype")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(type(dim) is int and 0 <= dim < MAX_DIM for dim in shape):
        raise CodecError(f"payload tensor {name!r} has a shape that is not a list of non-negative integers")
    return name, dtype_name, tuple(shape)


def decode(payload):
    """(tensors, meta) from `encode`'s bytes; raises CodecError for anything malformed."""
    payload = memoryview(bytes(payload))
    entries, meta = read_header(payload)
    offset, tensors = 8 + struct.unpack("<Q", payload[:8])[0], {}
    for name, dtype_name, shape in entries:
        nbytes = math.prod(shape) * ITEM_BYTES[dtype_name]
        raw = torch.frombuffer(bytearray(payload[offset:offset + nbytes]), dtype=torch.uint8) if nbytes else \
            torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(DTYPES[dtype_name]).reshape(shape)
        offset += nbytes
    return tensors, meta
