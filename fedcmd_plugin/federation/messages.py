"""What the server sends a client for one round (Dispatch) and what comes back (Upload).

The same two messages are passed as Python objects in standalone mode, gathered across ranks in distributed
mode and sent over gRPC in remote mode; `to_bytes`/`from_bytes` use the safe tensor codec, never pickle.
"""
from dataclasses import dataclass, field

from fedcmd_plugin.federation import codec

GROUPS = ("state", "kept", "extra")


def pack(groups, meta):
    flat = {f"{group}/{key}": value for group, tensors in groups.items() for key, value in tensors.items()}
    return codec.encode(flat, meta)


def split_groups(named):
    """{"group/key": value} -> {group: {key: value}}; CodecError for a name outside GROUPS."""
    groups = {group: {} for group in GROUPS}
    for name, value in named.items():
        group, _, key = name.partition("/")
        if group not in groups:
            raise codec.CodecError(f"payload tensor {name!r} belongs to no known group")
        groups[group][key] = value
    return groups


def unpack(payload):
    flat, meta = codec.decode(payload)
    return split_groups(flat), meta


def layout(payload):
    """({group: {key: (dtype name, shape)}}, meta) of a payload, read from its header alone: what a receiver
    checks before it decodes any tensor."""
    entries, meta = codec.read_header(payload)
    return split_groups({name: (dtype, shape) for name, dtype, shape in entries}), meta


@dataclass
class Dispatch:
    """Server -> client. `state`: parameters the client loads (its personal keys stay its own);
    `meta`: JSON settings of the round (round, seed, epochs, personal keys, algorithm phase...)."""
    state: dict
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_bytes(self):
        return pack({"state": self.state, "extra": self.extra}, self.meta)

    @classmethod
    def from_bytes(cls, payload):
        groups, meta = unpack(payload)
        return cls(groups["state"], meta, groups["extra"])


@dataclass
class Upload:
    """Client -> server. `state`: what the server may aggregate; `kept`: the client's own state (synced only
    between replicas of the same client on other ranks, never aggregated, never sent in remote mode);
    `extra`: tensors an algorithm reports (e.g. layer updates); `meta`: numbers (samples, votes, metrics)."""
    cid: str
    num_samples: int
    state: dict
    kept: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_bytes(self, with_kept=True):
        groups = {"state": self.state, "extra": self.extra, "kept": self.kept if with_kept else {}}
        return pack(groups, {"cid": self.cid, "num_samples": self.num_samples, "meta": self.meta})

    @classmethod
    def from_bytes(cls, payload):
        groups, head = unpack(payload)
        cid, num_samples, meta = head.get("cid"), head.get("num_samples"), head.get("meta")
        if not isinstance(cid, str) or type(num_samples) is not int or not isinstance(meta, dict):
            raise codec.CodecError("upload header needs cid (a string), num_samples (an integer) and meta (an "
                                   "object)")
        return cls(cid, num_samples, groups["state"], groups["kept"], groups["extra"], meta)
