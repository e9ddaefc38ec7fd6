"""BUC relabeling: the vectorised, blockwise step against a plain double loop, and the personalization rules."""
import math

import pytest
import torch

from fedcmd_plugin.errors import ConfigError, DataError
from fedcmd_plugin.fedureid import buc
from fedcmd_plugin.fedureid.buc import merge_step
from fedcmd_plugin.fedureid.personalization import adaptive_epochs, merge_amount


def reference_step(features, labels, merge_count, size_penalty):
    """Obviously correct BUC step: every image pair in Python, Kruskal over sorted cluster pairs."""
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    _, labels = torch.unique(labels, return_inverse=True)
    labels = labels.tolist()
    num_clusters = max(labels) + 1
    sizes = [labels.count(c) for c in range(num_clusters)]
    closest = {}
    for i in range(len(labels)):
        for j in range(len(labels)):
            a, b = labels[i], labels[j]
            if a < b:
                dist = math.sqrt(max(0.0, 2.0 - 2.0 * float(feats[i] @ feats[j])))
                closest[a, b] = min(closest.get((a, b), math.inf), dist)
    edges = sorted((dist + size_penalty * (sizes[a] + sizes[b]), a, b) for (a, b), dist in closest.items())
    parent = list(range(num_clusters))

    def root(c):
        while parent[c] != c:
            c = parent[c]
        return c

    merged = 0
    for _, a, b in edges:
        if merged == merge_count:
            break
        if root(a) != root(b):
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
            merged += 1
    roots = [root(c) for c in range(num_clusters)]
    order = sorted(set(roots))
    return torch.tensor([order.index(roots[c]) for c in labels])


@pytest.mark.parametrize("dense_pairs", [0, buc.DENSE_PAIRS], ids=["thresholded", "all-pairs"])
@pytest.mark.parametrize("seed", range(10))
def test_matches_double_loop(seed, dense_pairs, monkeypatch):
    monkeypatch.setattr(buc, "DENSE_PAIRS", dense_pairs)  # 0: keep only the closest pairs, widen when short
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(8, 60, (1,), generator=gen))
    features = torch.randn(n, 5, generator=gen)
    labels = torch.randint(0, max(2, n // int(torch.randint(1, 4, (1,), generator=gen))), (n,), generator=gen) * 7
    merge_count = int(torch.randint(1, n, (1,), generator=gen))
    penalty = (0.0, 0.003, 0.2)[seed % 3]
    block_size = int(torch.randint(1, 16, (1,), generator=gen))  # many blocks, clusters of any size
    expected = reference_step(features, labels, merge_count, penalty)
    assert torch.equal(merge_step(features, labels, merge_count, penalty, block_size=block_size), expected)


def test_merging_everything_widens_the_kept_pairs(monkeypatch):
    """6 tight groups of 15: the 630 within-group pairs fill the first kept set (4 * 89 + 64 = 420 pairs) and
    give only 84 merges, so the step must widen the set until the between-group pairs are in it."""
    monkeypatch.setattr(buc, "DENSE_PAIRS", 0)
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(6, 4, generator=gen).repeat_interleave(15, 0) + 0.01 * torch.randn(90, 4, generator=gen)
    widened = []
    closest_pairs = buc._closest_pairs
    monkeypatch.setattr(buc, "_closest_pairs", lambda *args: widened.append(args[-1]) or closest_pairs(*args))
    expected = reference_step(features, torch.arange(90), 89, 0.003)
    assert expected.max() == 0
    assert torch.equal(merge_step(features, torch.arange(90), 89, 0.003, block_size=10), expected)
    assert len(widened) > 1


def test_exact_merge_count_and_contiguous_labels():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(200, 16, generator=gen)
    labels = torch.randint(0, 150, (200,), generator=gen) + 1000
    before = torch.unique(labels).numel()
    for merges in (0, 1, 17, 60, before - 1, before + 50):
        new = merge_step(features, labels, merges, block_size=32)
        assert new.dtype == torch.long
        assert torch.equal(torch.unique(new), torch.arange(before - min(merges, before - 1)))


def test_clusters_only_grow():
    """Images that shared a cluster still share one: a step never splits, it only merges."""
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(120, 8, generator=gen)
    labels = torch.randint(0, 70, (120,), generator=gen)
    new = merge_step(features, labels, 20, block_size=16)
    same_before = labels[:, None] == labels[None, :]
    same_after = new[:, None] == new[None, :]
    assert bool(same_after[same_before].all())


def test_no_merge_inside_a_cluster():
    """Two images of one cluster are identical (distance 0) yet cannot be a merge; the closest other pair is."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2, 3])
    assert merge_step(features, labels, 1, size_penalty=0.0).tolist() == [0, 0, 1, 1, 2]


def test_size_penalty_prefers_small_clusters():
    """Cluster {0,1,2} is closest to image 3 (chord 0.100), image 4 to image 5 (0.120); a penalty of 0.02 per
    member makes the big pair cost 0.180 and the small pair 0.160, so the merge switches."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [math.cos(0.1), math.sin(0.1)], [0.0, -1.0],
                             [math.sin(0.12), -math.cos(0.12)]])
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    plain = merge_step(features, labels, 1, size_penalty=0.0)
    penalised = merge_step(features, labels, 1, size_penalty=0.02)
    assert plain[3] == plain[0] and plain[4] != plain[5]
    assert penalised[4] == penalised[5] and penalised[3] != penalised[0]


def test_ties_merge_the_smallest_cluster_ids_first():
    """Identical images tie at distance 0: the documented order (a, b) decides, here pairs (1, 2) then (1, 3)."""
    features = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert merge_step(features, torch.arange(5), 1, size_penalty=0.0).tolist() == [0, 1, 1, 2, 3]
    assert merge_step(features, torch.arange(5), 2, size_penalty=0.0).tolist() == [0, 1, 1, 1, 2]
    assert torch.equal(merge_step(features, torch.arange(5), 2, 0.0), reference_step(features, torch.arange(5), 2, 0.0))


def test_chained_merges_resolve_transitively():
    """Pairs (0,1) and (1,2) merged in one step put all three images in one cluster."""
    features = torch.tensor([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)], [math.cos(0.2), math.sin(0.2)],
                             [-1.0, 0.0]])
    assert merge_step(features, torch.arange(4), 2, size_penalty=0.0).tolist() == [0, 0, 0, 1]


def test_bad_inputs_are_one_line_errors():
    features = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="merge_count"):
        merge_step(features, torch.arange(4), -1)
    with pytest.raises(DataError, match="labels"):
        merge_step(features, torch.arange(3), 1)
    with pytest.raises(DataError, match="finite"):
        merge_step(torch.tensor([[1.0, 0.0], [float("nan"), 0.0]]), torch.arange(2), 1)


def test_merge_amount_spreads_the_remaining_merges():
    assert merge_amount(1000, 1000, target_clusters=100, remaining_steps=9) == 100
    assert merge_amount(1000, 150, target_clusters=100, remaining_steps=4) == 13  # ceil(50 / 4)
    assert merge_amount(1000, 90, target_clusters=100, remaining_steps=3) == 0  # already below target
    assert merge_amount(50, 50, target_clusters=1, remaining_steps=1) == 49
    # Without a target: estimated from the images per identity, so a bigger edge merges more per step.
    assert merge_amount(1700, 1700, remaining_steps=10) > merge_amount(340, 340, remaining_steps=10)
    with pytest.raises(ConfigError):
        merge_amount(10, 20, target_clusters=5)


def test_adaptive_epochs_follow_volume_and_stop_on_saturation():
    assert adaptive_epochs(4, num_images=500, reference_images=500) == 4
    assert adaptive_epochs(4, num_images=1000, reference_images=500) == 2  # big edge: fewer passes
    assert adaptive_epochs(4, num_images=250, reference_images=500) == 8  # small edge: more passes
    assert adaptive_epochs(4, num_images=100, reference_images=500, max_epochs=6) == 6
    rising = [0.2, 0.4, 0.6]
    assert adaptive_epochs(6, 500, 500, rising, patience=2, threshold=0.01) == 6
    flat = [0.2, 0.5, 0.503, 0.505]
    assert adaptive_epochs(6, 500, 500, flat, patience=2, threshold=0.01) == 4  # stop now
    assert adaptive_epochs(6, 500, 500, flat, patience=2, threshold=0.01, min_epochs=5) == 6
