"""The tensor codec: round trips, and every malformed archive is a clean CodecError (fuzzed with hypothesis)."""
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcmd_plugin.federation import codec
from fedcmd_plugin.federation.messages import Upload

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def archive(entries, body=b"", meta=None, header=None):
    """Hand-made payload: `entries` as the header's tensor list (anything JSON), then `body`."""
    text = json.dumps(header if header is not None else {"meta": meta or {}, "tensors": entries}).encode()
    return struct.pack("<Q", len(text)) + text + body


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_codec_round_trips_every_shape_and_dtype():
    tensors = {"counter": torch.tensor(7, dtype=torch.int64), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3), "mask": torch.tensor([[True, False], [False, True]]),
               "half": torch.arange(6, dtype=torch.float16).reshape(2, 3)}
    back, meta = codec.decode(codec.encode(tensors, {"round": 1}))
    assert meta == {"round": 1} and list(back) == list(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(back[name], tensor), name


MALFORMED = [
    (b"", "shorter"),
    (struct.pack("<Q", 2 ** 63) + b"{}", "out of range"),
    (archive(None, header=[1, 2]), "must be an object"),
    (archive([["w", "float32", [-1]]]), "non-negative"),
    (archive([["w", "float32", [1.5]]], b"\0" * 6), "non-negative"),
    (archive([["w", "float32", [True]]], b"\0" * 4), "non-negative"),
    (archive([["w", "float32", [2 ** 40, 2 ** 40]]]), "non-negative"),
    (archive([["w", "float32", [0, 2 ** 62]]]), "non-negative"),
    (archive([["w", "complex64", [1]]], b"\0" * 8), "dtype"),
    (archive([["w", ["float32"], [1]]], b"\0" * 4), "dtype"),
    (archive([[7, "float32", [1]]], b"\0" * 4), "name"),
    (archive([["w", "float32"]]), "entry"),
    (archive([["w", "float32", [2]]], b"\0" * 4), "but its header describes"),
    (archive([["w", "float32", [1]]], b"\0" * 5), "but its header describes"),
    (archive([["w", "uint8", [1]], ["w", "uint8", [1]]], b"\0\0"), "twice"),
    (archive(None, header={"meta": [], "tensors": []}), "'meta' object"),
    (struct.pack("<Q", 5) + b"\xff\xfe{}x", "not valid JSON"),
    (archive(None, header={"meta": {"x": nested(40)}, "tensors": []}), "deeper"),
    (struct.pack("<Q", 40006) + b"[" * 20003 + b"]" * 20003, "not valid JSON|deeper"),
]


@pytest.mark.parametrize("payload, reason", MALFORMED, ids=[f"{i}-{reason}" for i, (_, reason) in enumerate(MALFORMED)])
def test_malformed_archives_are_codec_errors(payload, reason):
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(payload)


def test_upload_header_types_are_strict():
    good = Upload("c000", 5, {"w": torch.ones(1)}).to_bytes()
    assert Upload.from_bytes(good).num_samples == 5
    typed = {"report": {}, "algorithm": None}
    for head in ({"cid": "c000", "num_samples": 5.0, **typed}, {"cid": "c000", "num_samples": True, **typed},
                 {"cid": 3, "num_samples": 5, **typed}, {"cid": "c000", "num_samples": "5", **typed},
                 {"cid": "c000", "num_samples": 5, "meta": {}}):  # the untyped form of old
        with pytest.raises(codec.CodecError, match="upload header"):
            Upload.from_bytes(codec.encode({}, head))


# ----- fuzzing -------------------------------------------------------------------------------------------------
dims = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.integers(0, 4), st.floats(allow_nan=True), st.booleans(),
                 st.none(), st.text(max_size=3))
shapes = st.one_of(st.lists(dims, max_size=5), st.integers(), st.text(max_size=3), st.none())
dtypes = st.one_of(st.sampled_from(sorted(codec.DTYPES)), st.text(max_size=8), st.integers(), st.none(),
                   st.lists(st.text(max_size=3), max_size=2))
names = st.one_of(st.text(max_size=6), st.integers(), st.none())
entries = st.one_of(st.lists(st.tuples(names, dtypes, shapes).map(list), max_size=4),
                    st.lists(st.lists(st.integers(), max_size=4), max_size=3), st.integers(), st.none())
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4)),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(st.text(max_size=3), children, max_size=3)),
                           max_leaves=40)


def assert_clean(payload):
    """decode() either succeeds with what the header promised or raises CodecError, nothing else."""
    try:
        tensors, meta = codec.decode(payload)
    except codec.CodecError:
        return
    assert isinstance(meta, dict)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


@FUZZ
@given(entries, json_values, st.binary(max_size=64))
def test_fuzzed_headers_never_escape_codec_error(tensor_entries, meta, body):
    assert_clean(archive(tensor_entries, body, header={"meta": meta, "tensors": tensor_entries}))
    assert_clean(archive(tensor_entries, body, meta={"m": meta}))


@FUZZ
@given(st.integers(0, 200), st.sampled_from(["meta", "tensors", "top"]))
def test_fuzzed_json_depth(depth, where):
    header = nested(depth) if where == "top" else \
        {"meta": {"x": nested(depth)}, "tensors": []} if where == "meta" else {"meta": {}, "tensors": nested(depth)}
    assert_clean(archive(None, header=header))


@FUZZ
@given(st.dictionaries(st.text(max_size=5), st.tuples(st.sampled_from(sorted(codec.DTYPES)),
                                                     st.lists(st.integers(0, 3), max_size=3)), max_size=4),
       st.integers(-16, 16), st.binary(max_size=3))
def test_fuzzed_lengths(spec, cut, garbage):
    tensors = {name: torch.zeros(shape, dtype=codec.DTYPES[dtype]) for name, (dtype, shape) in spec.items()}
    payload = codec.encode(tensors, {"k": 1})
    back, _ = codec.decode(payload)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in back.items()} == \
        {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    changed = payload[:cut] if cut < 0 else payload + garbage[:cut]
    if changed != payload:
        with pytest.raises(codec.CodecError):
            codec.decode(changed)
    assert_clean(bytes(b ^ 0x5A if i in (0, 3, 9, len(payload) // 2) else b for i, b in enumerate(payload)))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzzed_bytes(payload):
    assert_clean(payload)
