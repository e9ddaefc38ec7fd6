"""The typed round protocol: a Dispatch's RoundSettings and the algorithm's own Settings travel as checked JSON,
the same in every mode, and come back as the same typed values; anything else is a CodecError naming the field."""
from dataclasses import dataclass

import pytest
import torch

from fedcmd_plugin.baselines.fedfomo import FedFomoSettings
from fedcmd_plugin.fedcmd.client import FedCMDSettings, Scoring
from fedcmd_plugin.federation.codec import CodecError
from fedcmd_plugin.federation.messages import Dispatch, RoundSettings, Settings, pack
from fedcmd_plugin.personalized.client import SignatureSettings

from conftest import make_dispatch

SCORING = Scoring("exact", (0, 2, 3), None, 1024, 1)


def test_every_algorithms_settings_come_back_as_they_were_sent():
    cases = [(None, None), (FedCMDSettings("selection", scoring=SCORING), FedCMDSettings),
             (FedCMDSettings("decoupled", "update", ("blocks.fc2.weight",)), FedCMDSettings),
             (FedFomoSettings(0.2, ("c001", "c007")), FedFomoSettings)]
    for algorithm, kind in cases:
        sent = make_dispatch({"w": torch.arange(3.0)}, algorithm, extra={"c001/w": torch.ones(3)}, round=4,
                             seed=9, local_epoch=2, finetune_epoch=1, personal_keys=["w"])
        back = Dispatch.from_bytes(sent.to_bytes(), kind)
        assert back.settings == RoundSettings(4, 9, 2, 1, ("w",)) and back.algorithm == algorithm
        assert torch.equal(back.state["w"], sent.state["w"]) and set(back.extra) == {"c001/w"}
    assert Dispatch.from_bytes(make_dispatch({}, FedCMDSettings("selection", scoring=SCORING)).to_bytes(),
                               FedCMDSettings).algorithm.scoring.candidates == (0, 2, 3)  # a tuple again, not a list


def header_with(**changes):
    header = make_dispatch({}, FedFomoSettings(0.2, ("c001",))).header()
    for path, value in changes.items():
        part, _, name = path.partition("__")
        if value is KeyError:
            del header[part][name]
        else:
            header[part][name] = value
    return header


@pytest.mark.parametrize("changes, message", [
    ({"round__round": "3"}, "RoundSettings.round must be int, got str"),
    ({"round__local_epoch": True}, "RoundSettings.local_epoch must be int, got bool"),  # a bool is not a count
    ({"round__personal_keys": "w"}, "RoundSettings.personal_keys must be a list"),
    ({"round__personal_keys": ["w", 3]}, r"RoundSettings.personal_keys\[1\] must be str, got int"),
    ({"round__seed": KeyError}, "RoundSettings lacks field 'seed'"),
    ({"round__epochs": 3}, r"RoundSettings has unknown fields \['epochs'\]"),
    ({"algorithm__val_ratio": "0.2"}, "FedFomoSettings.val_ratio must be float, got str"),
    ({"algorithm__peers": None}, "FedFomoSettings.peers must be a list"),
])
def test_wrong_fields_are_codec_errors_naming_them(changes, message):
    with pytest.raises(CodecError, match=message):
        Dispatch.from_bytes(pack({"state": {}, "extra": {}}, header_with(**changes)), FedFomoSettings)


def test_settings_of_another_kind_or_none_at_all_are_refused():
    fomo = make_dispatch({}, FedFomoSettings(0.2)).to_bytes()
    with pytest.raises(CodecError, match="must be absent"):
        Dispatch.from_bytes(fomo)  # an algorithm without settings is sent some
    with pytest.raises(CodecError, match="must be an object of FedCMDSettings"):
        Dispatch.from_bytes(make_dispatch({}).to_bytes(), FedCMDSettings)
    with pytest.raises(CodecError, match=r"FedCMDSettings has unknown fields \['peers', 'val_ratio'\]"):
        Dispatch.from_bytes(fomo, FedCMDSettings)
    with pytest.raises(CodecError, match="exactly round and algorithm"):
        Dispatch.from_bytes(pack({"state": {}, "extra": {}}, {"round": 0}))  # the untyped form of old


def test_an_int_is_a_float_and_none_only_where_allowed():
    @dataclass(frozen=True)
    class Mine(Settings):
        strength: float
        limit: int | None = None

    assert Mine.from_json({"strength": 1}) == Mine(1.0) and isinstance(Mine.from_json({"strength": 1}).strength, float)
    assert Mine.from_json({"strength": 0.5, "limit": None}).limit is None
    with pytest.raises(CodecError, match="Mine.strength must be float, got NoneType"):
        Mine.from_json({"strength": None})


def test_each_settings_kind_says_what_the_answer_carries():
    layout = {"w": ("float32", (4, 3)), "b": ("float32", (4,)), "bn.running_mean": ("float32", (4,))}
    assert SignatureSettings("personalised", "value", ("w", "b")).expected_extras(layout) == (
        {"signature": ("float32", (4, 4))}, {})  # w's 3 columns and b's one per output row
    assert SignatureSettings("warmup").expected_extras(layout) == ({}, {})
    assert FedFomoSettings(0.2, ("c001", "c002")).expected_extras(layout) == ({"fomo_weights": ("float32", (2,))}, {})
    assert FedCMDSettings("selection", scoring=SCORING).vote_candidates() == (0, 2, 3)
    assert FedCMDSettings("decoupled", "update", ("w",)).vote_candidates() is None
