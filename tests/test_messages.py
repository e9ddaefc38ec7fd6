"""The typed round protocol: a Dispatch's RoundSettings and the algorithm's own Settings, and an Upload's
TrainingReport and the algorithm's own Report, travel as checked JSON, the same in every mode, and come back as the
same typed values; anything else is a CodecError naming the field."""
from dataclasses import dataclass

import pytest
import torch

from fedcmd_plugin.baselines.apfl import APFLReport
from fedcmd_plugin.baselines.fedfomo import FedFomoSettings
from fedcmd_plugin.fedcmd.client import BatchScores, FedCMDReport, FedCMDSettings, Scoring
from fedcmd_plugin.federation.codec import CodecError
from fedcmd_plugin.federation.messages import Dispatch, RoundSettings, Settings, TrainingReport, Upload, pack
from fedcmd_plugin.fedureid.client import FedUReIDReport
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


# ----- uploads -----------------------------------------------------------------------------------------------------
SCORES = BatchScores(((0.5, 0.25, 0.0), (1.0, 2.0, 3.0)), ((0.0, 0.125, 4.0), (7.0, 0.0, 1.5)))
REID = FedUReIDReport(epochs=3, train_precision=0.75, clusters=41, merges=9, images_extracted=120,
                      relabel_seconds=0.5)


@pytest.mark.parametrize("algorithm, kind", [(None, None), (FedCMDReport(2, SCORES), FedCMDReport),
                                             (APFLReport(0.375), APFLReport), (REID, FedUReIDReport)])
def test_every_algorithms_report_comes_back_as_it_was_sent(algorithm, kind):
    sent = Upload("c003", 17, {"w": torch.arange(4.0)}, {"own": torch.ones(2)}, {"signature": torch.zeros(1, 3)},
                  TrainingReport(images=51, train_loss=0.625, train_seconds=2.5), algorithm)
    back = Upload.from_bytes(sent.to_bytes(), kind)
    assert (back.cid, back.num_samples) == ("c003", 17)
    assert back.report == TrainingReport(51, 0.625, 2.5) and back.algorithm == algorithm
    assert torch.equal(back.state["w"], torch.arange(4.0)) and set(back.kept) == {"own"} and set(back.extra) == {
        "signature"}
    assert Upload.from_bytes(sent.to_bytes(with_kept=False), kind).kept == {}


def test_a_report_without_a_loss_and_batch_scores_keep_their_types():
    back = Upload.from_bytes(Upload("c000", 1, {}, report=TrainingReport(images=8)).to_bytes())
    assert back.report.train_loss is None and back.report.train_seconds == 0.0
    scores = Upload.from_bytes(Upload("c000", 1, {}, algorithm=FedCMDReport(0, SCORES)).to_bytes(),
                               FedCMDReport).algorithm.batch_scores
    assert isinstance(scores.exact, tuple) and isinstance(scores.exact[1], tuple)  # tuples again, not lists
    batches = scores.batches()
    assert len(batches) == 2 and set(batches[1]) == {"exact", "mean"}
    assert batches[1]["mean"].tolist() == [7.0, 0.0, 1.5] and batches[0]["exact"].tolist() == [0.5, 0.25, 0.0]


def upload_header_with(algorithm, **changes):
    """The header of an upload reporting `algorithm`, with `part__field[__field]` entries changed (KeyError:
    removed)."""
    header = Upload("c000", 5, {}, report=TrainingReport(4, 0.5, 1.0), algorithm=algorithm).header()
    for path, value in changes.items():
        *outer, name = path.split("__")
        target = header
        for step in outer:
            target = target[step]
        if value is KeyError:
            del target[name]
        else:
            target[name] = value
    return header


@pytest.mark.parametrize("algorithm, kind, changes, message", [
    (None, None, {"report__images": 4.0}, "TrainingReport.images must be int, got float"),
    (None, None, {"report__images": True}, "TrainingReport.images must be int, got bool"),
    (None, None, {"report__train_loss": "0.5"}, "TrainingReport.train_loss must be float, got str"),
    (None, None, {"report__samples": 3}, r"TrainingReport has unknown fields \['samples'\]"),
    (APFLReport(0.5), APFLReport, {"algorithm__alpha": None}, "APFLReport.alpha must be float, got NoneType"),
    (APFLReport(0.5), APFLReport, {"algorithm__alpha": KeyError}, "APFLReport lacks field 'alpha'"),
    (APFLReport(0.5), APFLReport, {"algorithm__beta": 0.1}, r"APFLReport has unknown fields \['beta'\]"),
    (FedCMDReport(1, SCORES), FedCMDReport, {"algorithm__vote": "1"}, "FedCMDReport.vote must be int, got str"),
    (FedCMDReport(1, SCORES), FedCMDReport, {"algorithm__batch_scores": KeyError},
     "FedCMDReport lacks field 'batch_scores'"),
    (FedCMDReport(1, SCORES), FedCMDReport, {"algorithm__batch_scores__mean": [[0.1, "x"]]},
     r"FedCMDReport.batch_scores.mean\[0\]\[1\] must be float, got str"),
    (FedCMDReport(1, SCORES), FedCMDReport, {"algorithm__batch_scores__cosine": []},
     r"FedCMDReport.batch_scores has unknown fields \['cosine'\]"),
    (REID, FedUReIDReport, {"algorithm__clusters": 41.0}, "FedUReIDReport.clusters must be int, got float"),
    (REID, FedUReIDReport, {"algorithm__merges": KeyError}, "FedUReIDReport lacks field 'merges'"),
])
def test_wrong_report_fields_are_codec_errors_naming_them(algorithm, kind, changes, message):
    with pytest.raises(CodecError, match=message):
        Upload.from_bytes(pack({}, upload_header_with(algorithm, **changes)), kind)


def test_reports_of_another_kind_or_none_at_all_are_refused():
    apfl = Upload("c000", 5, {}, algorithm=APFLReport(0.5)).to_bytes()
    with pytest.raises(CodecError, match="upload algorithm report must be absent"):
        Upload.from_bytes(apfl)  # an algorithm that reports nothing extra is sent a report
    with pytest.raises(CodecError, match=r"FedCMDReport has unknown fields \['alpha'\]"):
        Upload.from_bytes(apfl, FedCMDReport)
    with pytest.raises(CodecError, match=r"FedUReIDReport has unknown fields \['batch_scores', 'vote'\]"):
        Upload.from_bytes(Upload("c000", 5, {}, algorithm=FedCMDReport(1, SCORES)).to_bytes(), FedUReIDReport)
    with pytest.raises(CodecError, match="TrainingReport must be an object"):
        Upload.from_bytes(pack({}, {**upload_header_with(None), "report": 4}))
    # FedCMD reports only while it selects: no report decodes as None whatever the algorithm's type
    assert Upload.from_bytes(Upload("c000", 5, {}).to_bytes(), FedCMDReport).algorithm is None

