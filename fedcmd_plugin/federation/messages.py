"""What the server sends a client for one round (Dispatch: the round's typed RoundSettings and the algorithm's
own typed Settings beside the tensors) and what comes back (Upload: the typed TrainingReport every client makes
and the algorithm's own typed Report beside the tensors).

The same two messages are passed as Python objects in standalone mode, gathered across ranks in distributed
mode and sent over gRPC in remote mode; `to_bytes`/`from_bytes` use the safe tensor codec, never pickle.
"""
import dataclasses
import functools
import types
import typing
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


# ----- the typed parts of both messages ----------------------------------------------------------------------------
def typed(kind, value, where):
    """`value` (decoded JSON) as the annotated type `kind`: int, float, bool, str, X | None, tuple[X, ...] or a
    Typed dataclass; anything else is a CodecError naming `where`. int is not bool; a float field takes an int."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
        return typed(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise codec.CodecError(f"{where} must be a list")
        return tuple(typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(kind):
        return kind.from_json(value, where)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise codec.CodecError(f"{where} must be {kind.__name__}, got {type(value).__name__}")
    return value


class Typed:
    """Base of the typed parts of Dispatches and Uploads: frozen dataclasses whose fields are JSON-able values
    (`typed`), so that what crosses a process or the network comes back as it was sent or not at all."""

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj, where=None):
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise codec.CodecError(f"{where} must be an object")
        fields = field_types(cls)
        unknown = sorted(set(obj) - set(fields))
        if unknown:
            raise codec.CodecError(f"{where} has unknown fields {unknown}")
        values = {}
        for name, (kind, required) in fields.items():
            if name in obj:
                values[name] = typed(kind, obj[name], f"{where}.{name}")
            elif required:
                raise codec.CodecError(f"{where} lacks field {name!r}")
        return cls(**values)


@functools.cache
def field_types(cls):
    """{field name: (annotated type, whether it has no default)} of a Typed dataclass, worked out once per
    class (every dispatch and upload decoded asks)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


class Settings(Typed):
    """Base of the algorithms' parts of a Dispatch. They also say what a client's upload carries in answer
    (checked in remote mode)."""

    def expected_extras(self, layout):
        """({extra name: (dtype name, shape)}, {extra name: smallest value}) of the upload's extras, from the
        model's `layout` ({key: (dtype name, shape)})."""
        return {}, {}

    def vote_candidates(self):
        """The blocks a vote in the upload may name; None: no vote is asked for."""
        return None


class Report(Typed):
    """Base of an Upload's typed parts: the TrainingReport every client makes and the algorithms' own (numbers
    their servers use or log)."""

    def mismatch(self, candidates, blocks):
        """Why this report cannot answer a request that asked for a vote among `candidates` (None: no vote was
        asked for) on a model of `blocks` blocks; None when it can (checked in remote mode)."""
        return None


@dataclass(frozen=True)
class RoundSettings(Settings):
    """What every client is told about the round: which one, the run's seed (with round and client it seeds every
    draw), its local epochs (fewer for the round's stragglers), the epochs it fine-tunes before its personalised
    test, and the state keys it keeps for itself."""
    round: int
    seed: int
    local_epoch: int
    finetune_epoch: int = 0
    personal_keys: tuple[str, ...] = ()


@dataclass
class Dispatch:
    """Server -> client. `state`: parameters the client loads (its personal keys stay its own); `settings`: the
    round's RoundSettings; `algorithm`: the algorithm's own typed settings (the `Settings` dataclass its client
    declares as `settings_type`; None for algorithms without any); `extra`: tensors only training needs (e.g.
    other clients' models)."""
    state: dict
    settings: RoundSettings
    algorithm: Settings | None = None
    extra: dict = field(default_factory=dict)

    def header(self):
        return {"round": self.settings.to_json(),
                "algorithm": None if self.algorithm is None else self.algorithm.to_json()}

    def to_bytes(self):
        return pack({"state": self.state, "extra": self.extra}, self.header())

    @classmethod
    def from_parts(cls, groups, header, settings_type):
        """A Dispatch from decoded tensor groups and header; `settings_type`: the algorithm's Settings class."""
        if not isinstance(header, dict) or set(header) != {"round", "algorithm"}:
            raise codec.CodecError("dispatch header must hold exactly round and algorithm")
        algorithm = header["algorithm"]
        if (algorithm is None) != (settings_type is None):
            wanted = "absent" if settings_type is None else f"an object of {settings_type.__name__}"
            raise codec.CodecError(f"dispatch algorithm settings must be {wanted}")
        return cls(groups["state"], RoundSettings.from_json(header["round"]),
                   None if algorithm is None else settings_type.from_json(algorithm), groups["extra"])

    @classmethod
    def from_bytes(cls, payload, settings_type=None):
        groups, header = unpack(payload)
        return cls.from_parts(groups, header, settings_type)


@dataclass(frozen=True)
class TrainingReport(Report):
    """What every client's training reports: the images it trained on (summed over its epochs), the mean loss
    per sample of its last epoch (None: it trains without one) and the seconds its round took."""
    images: int = 0
    train_loss: float | None = None
    train_seconds: float = 0.0


@dataclass
class Upload:
    """Client -> server. `state`: what the server may aggregate; `kept`: the client's own state (synced only
    between replicas of the same client on other ranks, never aggregated, never sent in remote mode);
    `extra`: tensors an algorithm reports (e.g. layer updates); `report`: the round's TrainingReport;
    `algorithm`: the algorithm's own typed report (the `Report` dataclass its client declares as `report_type`;
    None when it reports nothing extra this round)."""
    cid: str
    num_samples: int
    state: dict
    kept: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    report: TrainingReport = field(default_factory=TrainingReport)
    algorithm: Report | None = None

    def header(self):
        return {"cid": self.cid, "num_samples": self.num_samples, "report": self.report.to_json(),
                "algorithm": None if self.algorithm is None else self.algorithm.to_json()}

    def to_bytes(self, with_kept=True):
        groups = {"state": self.state, "extra": self.extra, "kept": self.kept if with_kept else {}}
        return pack(groups, self.header())

    @classmethod
    def from_bytes(cls, payload, report_type=None):
        """An Upload from `to_bytes`' bytes; `report_type`: the algorithm's Report class (its client's
        `report_type`). CodecError for anything else, naming the field."""
        groups, head = unpack(payload)
        if set(head) != {"cid", "num_samples", "report", "algorithm"}:
            raise codec.CodecError("upload header must hold exactly cid, num_samples, report and algorithm")
        cid, num_samples, algorithm = head["cid"], head["num_samples"], head["algorithm"]
        if not isinstance(cid, str) or type(num_samples) is not int:
            raise codec.CodecError("upload header needs cid (a string) and num_samples (an integer)")
        if algorithm is not None and report_type is None:
            raise codec.CodecError("upload algorithm report must be absent: the algorithm reports nothing extra")
        return cls(cid, num_samples, groups["state"], groups["kept"], groups["extra"],
                   TrainingReport.from_json(head["report"]),
                   None if algorithm is None else report_type.from_json(algorithm))
