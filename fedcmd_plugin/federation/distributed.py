"""Collectives the plugin needs beyond EasyFL's all-reduce: every rank gets every rank's uploads/results.

Only bytes from the safe codec or JSON cross ranks, so the same aggregation code runs on identical inputs on
every rank (per-client aggregates, vote tallies, EMA), whichever rank trained which client.

Every collective has a deadline (`distributed.timeout_seconds`): a rank that waits longer for the others, because
one of them died or hangs, fails instead of waiting forever.
"""
import json
import os
import struct
from datetime import timedelta

import torch
import torch.distributed as dist

from fedcmd_plugin.federation.messages import Upload

# nccl enforces the deadline with its watchdog only while asynchronous error handling is on: a collective that
# times out then ends the process (torchrun sets the same default; a value in the environment wins).
BACKEND_ENVIRONMENT = {"nccl": {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}}


def init_process_group(backend, init_method, world_size, rank, timeout_seconds):
    """Join the run's process group; the rendezvous and every collective give up after `timeout_seconds` (gloo
    raises in the waiting call, nccl's watchdog ends the process)."""
    for name, value in BACKEND_ENVIRONMENT.get(backend, {}).items():
        os.environ.setdefault(name, value)
    dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank,
                            timeout=timedelta(seconds=timeout_seconds))


def leave_process_group():
    """Leave the run's process group when the run ends: a group left for the interpreter's exit to tear down can
    abort a rank that finished its run ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size():
    if is_active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device():
    """nccl moves CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_bytes(payload):
    """One bytes object per rank, in rank order, on every rank."""
    if not is_active():
        return [payload]
    device = collective_device()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    if payload:
        mine[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    gathered = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(gathered, mine)
    return [bytes(t[:int(s.item())].cpu().numpy()) for t, s in zip(gathered, sizes)]


def join(parts):
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def split(blob):
    parts, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<Q", blob, offset)
        parts.append(blob[offset + 8:offset + 8 + size])
        offset += 8 + size
    return parts


def gather_uploads(uploads, report_type=None):
    """All ranks' uploads on every rank (unchanged objects when not distributed); `report_type`: the algorithm's
    Report class, which the uploads' algorithm reports decode as."""
    if not is_active():
        return list(uploads)
    blobs = all_gather_bytes(join([u.to_bytes() for u in uploads]))
    return [Upload.from_bytes(part, report_type) for blob in blobs for part in split(blob)]


def gather_json(items):
    """All ranks' JSON-serialisable items, concatenated in rank order, on every rank."""
    if not is_active():
        return list(items)
    return [item for blob in all_gather_bytes(json.dumps(items).encode()) for item in json.loads(blob)]


def shard(items, rank, size):
    """This rank's deterministic share of `items` (round-robin), so placement never depends on timing."""
    return list(items)[rank::size]
