"""Every answer a client service sends is checked against the request it answers before the round uses it.

A training upload must hold exactly the tensors the client was asked to train (the model's keys minus the
round's personal keys, with the model's shapes and dtypes; extras only as the dispatch asked for them: a
signature, FedFomo's weight per model sent, FedAP's BatchNorm means and variances >= 0 per layer asked for),
finite values no larger than `remote.max_abs_value`, 0 < num_samples <= the client's training samples, no
kept state, and reports (typed when the upload was decoded) whose numbers are finite and >= 0 and that fit the
request by their own rule (`Report.mismatch`: e.g. a FedCMD vote only for a candidate it was asked to score).
An evaluation result must hold the counts of the requested splits with the client's known split sizes, or
(ReID) metrics in their ranges. The layout is checked from the archive's header before any tensor is decoded.
A failing answer raises Rejected with the reason; the round goes on without it.
"""
import dataclasses
import math
from dataclasses import dataclass, field

import torch

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation import codec
from fedcmd_plugin.remote.wire import TRAIN

PERCENT_METRICS = ("mAP", "rank1", "rank5", "rank10")
UNIT_METRICS = ("nmi", "pairwise_f")


class Rejected(PluginError):
    """A client's answer that does not fit the request it answers."""


@dataclass(frozen=True)
class Expectation:
    """What client `cid`'s answer to one request may look like."""
    kind: str
    cid: str
    state: dict = field(default_factory=dict)  # key -> (dtype name, shape) of the upload's state
    extra: dict = field(default_factory=dict)  # key -> (dtype name, shape) of the upload's extras
    minimum: dict = field(default_factory=dict)  # extra key -> the smallest value its tensor may hold
    samples: int = 0  # the client's training samples
    candidates: tuple | None = None  # blocks a vote may name; None: no vote asked for
    splits: dict = field(default_factory=dict)  # evaluation split -> the client's samples in it
    task: str = "classification"
    blocks: int = 0
    max_abs: float = math.inf


class Policy:
    """Builds the Expectation of each request from the model and the partition the server knows.

    reference_state: the model's state dict; sizes: {cid: {"train": n, "test": n}}; task: the data's task
    (classification | reid); blocks: the model's named blocks (FedCMD's scores have one per block)."""

    def __init__(self, reference_state, sizes, task, blocks, max_abs):
        self.layout = {key: (codec.NAMES[value.dtype], tuple(value.shape)) for key, value in reference_state.items()}
        self.sizes = sizes
        self.task = task
        self.blocks = blocks
        self.max_abs = float(max_abs)

    def expect(self, kind, cid, dispatch, splits=()):
        sizes = self.sizes[cid]
        common = {"kind": kind, "cid": cid, "task": self.task, "blocks": self.blocks, "max_abs": self.max_abs}
        if kind != TRAIN:
            return Expectation(**common, splits={split: sizes[split] for split in splits})
        personal = set(dispatch.settings.personal_keys)
        asked = dispatch.algorithm  # the algorithm's Settings say what the answer carries beside the state
        extra, minimum = asked.expected_extras(self.layout) if asked else ({}, {})
        candidates = asked.vote_candidates() if asked else None
        return Expectation(**common, state={k: v for k, v in self.layout.items() if k not in personal},
                           extra=extra, minimum=minimum, samples=sizes["train"], candidates=candidates)


# ----- training uploads ---------------------------------------------------------------------------------------
def check_layout(expected, groups):
    """`groups` ({group: {key: (dtype name, shape)}}, from the archive's header) against the expectation."""
    if groups["kept"]:
        raise Rejected("the upload carries kept state, which never leaves a client")
    for group, wanted in (("state", expected.state), ("extra", expected.extra)):
        found = groups[group]
        missing, unexpected = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
        if missing or unexpected:
            raise Rejected(f"{group} keys differ from the request's: missing {names(missing)}, unexpected "
                           f"{names(unexpected)}")
        for key, (dtype, shape) in wanted.items():
            if found[key] != (dtype, shape):
                raise Rejected(f"{group} tensor {key!r} is {found[key][0]}{list(found[key][1])}, expected "
                               f"{dtype}{list(shape)}")


def names(keys, shown=3):
    return "none" if not keys else ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown
                                                               else "")


def check_upload(expected, upload):
    """A decoded Upload (layout already checked) against the expectation."""
    if upload.cid != expected.cid:
        raise Rejected(f"the archive names client {upload.cid!r}")
    if not 0 < upload.num_samples <= expected.samples:
        raise Rejected(f"num_samples {upload.num_samples} is outside 1..{expected.samples} (the client's "
                       "training samples)")
    for group in ("state", "extra"):
        for key, tensor in getattr(upload, group).items():
            check_values(f"{group} tensor {key!r}", tensor, expected.max_abs)
    for key, low in expected.minimum.items():
        if upload.extra[key].numel() and float(upload.extra[key].min()) < low:
            raise Rejected(f"extra tensor {key!r} holds values below {low:g}")
    check_numbers("report", upload.report)
    check_numbers("algorithm", upload.algorithm)  # None (no algorithm report) holds no numbers
    reason = upload.algorithm.mismatch(expected.candidates, expected.blocks) if upload.algorithm else None
    if reason:
        raise Rejected(reason)


def check_values(what, tensor, max_abs):
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor).all()):
        raise Rejected(f"{what} holds NaN or infinite values")
    largest = float(tensor.abs().max())
    if largest > max_abs:
        raise Rejected(f"{what} holds |value| {largest:.3g} > remote.max_abs_value={max_abs:g}")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_numbers(where, value):
    """Every number of a report (nested reports and tuples included) is finite and >= 0: its types were checked
    when it was decoded, its values come from the network."""
    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            check_numbers(f"{where}.{item.name}", getattr(value, item.name))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            check_numbers(f"{where}[{index}]", item)
    elif isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
        raise Rejected(f"{where} is {value!r}, not a finite number >= 0")


# ----- evaluation results -------------------------------------------------------------------------------------
def check_result(expected, result):
    """A decoded evaluation result (a JSON object) against the expectation."""
    if result.get("cid", expected.cid) != expected.cid:
        raise Rejected(f"the result names client {result.get('cid')!r}")
    values = {key: value for key, value in result.items() if key != "cid"}
    if expected.task == "reid":
        check_reid_result(expected, values)
    else:
        check_classification_result(expected, values)


def check_classification_result(expected, values):
    wanted = {f"{split}_{what}" for split in expected.splits for what in ("correct", "loss", "total")}
    if set(values) != wanted:
        raise Rejected(f"result keys differ from the request's: missing {names(sorted(wanted - set(values)))}, "
                       f"unexpected {names(sorted(set(values) - wanted))}")
    for split, size in expected.splits.items():
        total, correct, loss = (values[f"{split}_{what}"] for what in ("total", "correct", "loss"))
        if type(total) is not int or total != size:
            raise Rejected(f"{split}_total {total!r} is not the client's {split} split size {size}")
        if type(correct) is not int or not 0 <= correct <= total:
            raise Rejected(f"{split}_correct {correct!r} is outside 0..{total}")
        if not is_number(loss) or loss < 0:
            raise Rejected(f"{split}_loss {loss!r} is not a finite number >= 0")


def check_reid_result(expected, values):
    required = {*PERCENT_METRICS, "cmc", "queries"}
    allowed = required | {*UNIT_METRICS, "clusters"}
    if not required <= set(values) <= allowed:
        raise Rejected(f"result keys differ from a ReID evaluation's: missing {names(sorted(required - set(values)))}"
                       f", unexpected {names(sorted(set(values) - allowed))}")
    cmc = values["cmc"]
    percents = [values[key] for key in PERCENT_METRICS] + (cmc if isinstance(cmc, list) else [None])
    if not all(is_number(v) and 0 <= v <= 100 for v in percents):
        raise Rejected("mAP, rank-k and CMC values must be percentages in 0..100")
    if not all(is_number(values[key]) and 0 <= values[key] <= 1 for key in UNIT_METRICS if key in values):
        raise Rejected("nmi and pairwise_f must be in 0..1")
    test_size = expected.splits.get("test", 0)
    if type(values["queries"]) is not int or not 0 <= values["queries"] <= test_size:
        raise Rejected(f"queries {values['queries']!r} is outside 0..{test_size} (the client's test images)")
    if "clusters" in values and (type(values["clusters"]) is not int or values["clusters"] < 1):
        raise Rejected(f"clusters {values['clusters']!r} is not a positive integer")
