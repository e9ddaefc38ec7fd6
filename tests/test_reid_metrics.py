"""ReID metrics: hand-computed mAP/CMC cases, a slow reference agreeing with the fast version, label quality."""
import numpy as np
import pytest
import torch

from fedcmd_plugin.errors import DataError
from fedcmd_plugin.fedureid import metrics
from fedcmd_plugin.fedureid.metrics import evaluate, pseudo_label_quality

# Gallery on a line at x = 1..6 so the ranking from any query position is obvious.
GALLERY_X = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
GALLERY_PIDS = [1, 2, 1, -1, 0, 1]  # g3 is junk, g4 a distractor
GALLERY_CAMS = [1, 2, 2, 2, 3, 3]


def line(xs):
    return torch.tensor(xs).unsqueeze(1)


def test_hand_computed_case():
    # q0: pid 1, cam 1 at x=0. Ranking g0..g5; g0 is the same pid in the same camera (ignored), g3 junk
    # (ignored). Kept: g1 (miss), g2 (hit at 2), g4 (miss), g5 (hit at 4): AP = (1/2 + 2/4) / 2 = 0.5.
    # q1: pid 3 has no gallery image: skipped.
    # q2: pid 2, cam 1 at x=10. Ranking g5, g4, g3, g2, g1, g0; kept g5, g4, g2, g1 (hit at 4), g0: AP = 1/4.
    result = evaluate(line([0.0, 0.0, 10.0]), [1, 3, 2], [1, 1, 1], line(GALLERY_X), GALLERY_PIDS, GALLERY_CAMS,
                      ranks=(1, 2, 4, 5))
    assert result["num_queries"] == 2 and result["skipped_queries"] == 1
    assert result["mAP"] == pytest.approx(0.375)
    assert (result["rank1"], result["rank2"], result["rank4"], result["rank5"]) == (0.0, 0.5, 1.0, 1.0)
    assert result["cmc"][:5].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_same_camera_match_is_ignored_not_counted():
    # The only gallery image of pid 2 is in the query's camera: nothing left to find.
    result = evaluate(line([0.0, 0.0]), [2, 1], [2, 2], line(GALLERY_X), GALLERY_PIDS, GALLERY_CAMS)
    assert result["num_queries"] == 1 and result["skipped_queries"] == 1
    # pid 1 from camera 2: g0 (cam 1) hit at rank 1, g2 is same camera (ignored), g5 hit at rank 4 of kept
    # (g0, g1, g4, g5): AP = (1/1 + 2/4) / 2.
    assert result["mAP"] == pytest.approx(0.75)
    assert result["rank1"] == 1.0


def test_no_valid_query_is_an_error():
    with pytest.raises(DataError, match="valid match"):
        evaluate(line([0.0]), [7], [1], line(GALLERY_X), GALLERY_PIDS, GALLERY_CAMS)


def reference_evaluate(qf, q_pids, q_cams, gf, g_pids, g_cams, max_rank):
    """Slow and obvious: one query at a time, one gallery image at a time."""
    aps, cmc, skipped = [], np.zeros(max_rank), 0
    for q in range(len(qf)):
        dists = [float(((qf[q].double() - gf[g].double()) ** 2).sum()) for g in range(len(gf))]
        ranking = sorted(range(len(gf)), key=lambda g: (dists[g], g))
        kept = [g for g in ranking if g_pids[g] != -1 and not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        hits = [rank for rank, g in enumerate(kept, start=1) if g_pids[g] == q_pids[q]]
        if not hits:
            skipped += 1
            continue
        aps.append(sum((i + 1) / rank for i, rank in enumerate(hits)) / len(hits))
        if hits[0] <= max_rank:
            cmc[hits[0] - 1:] += 1
    return float(np.mean(aps)), cmc / len(aps), skipped


def test_fast_agrees_with_slow_reference_on_random_data(monkeypatch):
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 7)  # several query chunks
    gen = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(40, 8, generator=gen), torch.randn(250, 8, generator=gen)
    q_pids = torch.randint(1, 40, (40,), generator=gen).tolist()  # pids above 29: no gallery image
    g_pids = torch.randint(-1, 30, (250,), generator=gen).tolist()  # includes junk (-1) and distractors (0)
    q_cams, g_cams = (torch.randint(1, 4, (n,), generator=gen).tolist() for n in (40, 250))
    expected_map, expected_cmc, expected_skipped = reference_evaluate(qf, q_pids, q_cams, gf, g_pids, g_cams, 50)
    result = evaluate(qf, q_pids, q_cams, gf, g_pids, g_cams)
    assert expected_skipped > 0 and result["skipped_queries"] == expected_skipped
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-6)
    np.testing.assert_allclose(result["cmc"], expected_cmc, atol=1e-9)
    assert result["rank1"] == pytest.approx(expected_cmc[0]) and result["rank10"] == pytest.approx(expected_cmc[9])


def test_pseudo_label_quality_hand_case():
    # Predicted pairs {01, 23}, true pairs {01, 02, 12}: precision 1/2, recall 1/3, F = 0.4.
    quality = pseudo_label_quality([0, 0, 1, 1], [5, 5, 5, 9])
    assert quality["pairwise_precision"] == pytest.approx(0.5)
    assert quality["pairwise_recall"] == pytest.approx(1 / 3)
    assert quality["pairwise_f"] == pytest.approx(0.4)
    assert 0 < quality["nmi"] < 1


def test_pseudo_label_quality_perfect_up_to_renaming():
    quality = pseudo_label_quality(torch.tensor([3, 3, 1, 1, 0]), [10, 10, 20, 20, 30])
    assert quality["nmi"] == pytest.approx(1.0) and quality["pairwise_f"] == pytest.approx(1.0)
