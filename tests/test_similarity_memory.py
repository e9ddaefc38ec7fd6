"""The sparse similarity memory and the reference mode's softmax over all clients, checked against a dense,
obviously-correct N x N computation."""
import math
import random

import torch

from fedcmd_plugin.personalized.similarity import LatestStates, SimilarityMemory


def test_memory_is_symmetric_sparse_and_keeps_the_latest_value():
    memory = SimilarityMemory()
    memory.record(["a", "b", "c"], [[1, 0.2, 0.0], [0.2, 1, 0.7], [0.0, 0.7, 1]])
    assert len(memory) == 3 and memory.get("b", "a") == 0.2 and memory.get("c", "c") == 1.0
    memory.record(["a", "b"], [[1, 0.9], [0.9, 1]])
    assert memory.get("a", "b") == memory.get("b", "a") == 0.9
    assert memory.get("a", "z") == 0.0 and len(memory) == 3  # never met: 0, and nothing stored
    assert memory.partners("a")[0] == ("a", 1.0) and dict(memory.partners("a")) == {"a": 1.0, "b": 0.9, "c": 0.0}
    assert memory.top_k("b", 1) == [["a", 0.9]]
    assert memory.partners("z") == [("z", 1.0)]


def test_busiest_clients_for_the_heat_map():
    memory = SimilarityMemory()
    memory.record(["c", "d"], [[1, 0.5], [0.5, 1]])
    memory.record(["a", "c", "e"], [[1, 0.1, 0.2], [0.1, 1, 0.3], [0.2, 0.3, 1]])
    order = ["a", "b", "c", "d", "e"]
    assert memory.busiest(order, 2) == ["a", "c"]  # c has 3 partners; a and e have 2, a comes first in order
    assert memory.busiest(order, 10) == ["a", "c", "d", "e"]  # b never met anyone


def dense_reference(cid, memory, clients, states, fallback):
    """Row `cid` of the full N x N matrix (unmet = 0), softmax over all N, applied to every client's state."""
    row = torch.tensor([memory.get(cid, other) for other in clients], dtype=torch.float64)
    weights = torch.softmax(row, dim=0)
    values = [states.get(other, fallback)["w"].to(torch.float64) for other in clients]
    return sum(w * v for w, v in zip(weights, values))


def test_softmax_mix_over_partners_equals_the_dense_softmax_over_everyone():
    rnd = random.Random(5)
    clients = [f"c{i}" for i in range(9)]
    memory, latest, states = SimilarityMemory(), LatestStates(), {}
    for _ in range(6):  # six rounds of three clients each
        met = rnd.sample(clients, 3)
        memory.record(met, [[1 if a == b else rnd.random() for b in met] for a in met])
        for cid in met[:2]:  # the third one's upload got lost: it has no latest state
            states[cid] = {"w": torch.randn(2, 3)}
            latest.update(cid, states[cid])
    fallback = {"w": torch.full((2, 3), 0.5)}
    for cid in clients:
        mixed = latest.softmax_mix(cid, memory, len(clients), fallback)["w"]
        expected = dense_reference(cid, memory, clients, states, fallback)
        assert torch.allclose(mixed.to(torch.float64), expected, atol=1e-5), cid


def test_latest_states_running_sum_follows_replacements():
    latest = LatestStates()
    latest.update("a", {"w": torch.tensor([1.0])})
    latest.update("b", {"w": torch.tensor([2.0])})
    latest.update("a", {"w": torch.tensor([5.0])})
    assert len(latest) == 2 and math.isclose(latest.total["w"].item(), 7.0)


def test_every_client_that_met_no_one_gets_the_shared_mix_of_none():
    """Checkpoints store FedCMD's mix once for all clients that met no one (softmax_mix(None)), per client for
    the rest: the dense row of any such client gives that shared mix."""
    clients = [f"c{i}" for i in range(7)]
    memory, latest, states = SimilarityMemory(), LatestStates(), {}
    memory.record(["c1", "c4"], [[1, 0.6], [0.6, 1]])
    for cid in ("c1", "c4"):
        states[cid] = {"w": torch.randn(3)}
        latest.update(cid, states[cid])
    fallback = {"w": torch.zeros(3)}
    shared = latest.softmax_mix(None, memory, len(clients), fallback)["w"].to(torch.float64)
    for cid in clients:
        expected = dense_reference(cid, memory, clients, states, fallback)
        assert torch.allclose(shared, expected, atol=1e-6) == (not memory.has_met(cid) and cid not in latest), cid
