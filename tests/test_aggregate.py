"""Aggregation maths checked against formulas written out by hand on small tensors."""
import math

import pytest
import torch

from fedcmd_plugin.aggregate import (
    ema, feddyn_gradient_state, feddyn_server_step, inner_product, mixture, normalise_rows, personalised_aggregates,
    row_matrix, row_matrix_shape, rowwise_cosine, similarity_matrix, softmax_row_mix, squared_distance,
    weighted_average,
)


def three_states():
    return [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]]), "n": torch.tensor(10)},
        {"w": torch.tensor([3.0, -1.0]), "b": torch.tensor([[6.0]]), "n": torch.tensor(20)},
        {"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([[3.0]]), "n": torch.tensor(31)},
    ]


def test_weighted_average_matches_hand_formula():
    states = three_states()
    result = weighted_average(states, [1, 2, 7])
    assert torch.allclose(result["w"], torch.tensor([(1 + 6 + 0) / 10, (2 - 2 + 28) / 10]))
    assert torch.allclose(result["b"], torch.tensor([[(0 + 12 + 21) / 10]]))
    assert result["n"].item() == round((10 + 40 + 217) / 10)  # 26.7 -> 27
    assert result["n"].dtype == torch.int64 and result["b"].shape == (1, 1)


def test_weighted_average_only_requested_keys():
    result = weighted_average(three_states(), [1, 1, 1], keys=["w"])
    assert list(result) == ["w"]
    assert torch.allclose(result["w"], torch.tensor([4 / 3, 5 / 3]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    states = [{"w": torch.tensor([1.0, 2.0], dtype=dtype)}, {"w": torch.tensor([2.0, 4.0], dtype=dtype)}]
    assert weighted_average(states, [1, 3])["w"].dtype == dtype
    assert ema(states[0], states[1], 0.5)["w"].dtype == dtype
    assert personalised_aggregates(states, torch.eye(2), ["w"])[1]["w"].dtype == dtype


def test_weighted_average_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_average(three_states(), [0, 0, 0])
    with pytest.raises(ValueError):
        weighted_average(three_states(), [1, -1, 1])
    with pytest.raises(ValueError):
        weighted_average(three_states(), [1, 1])


def test_personalised_aggregates_match_hand_formula():
    states = three_states()
    phi = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]])
    results = personalised_aggregates(states, phi, ["w", "b"])
    assert len(results) == 3
    for i, result in enumerate(results):
        for key in ("w", "b"):
            expected = sum(phi[i, j] * states[j][key] for j in range(3)) / phi[i].sum()
            assert torch.allclose(result[key], expected)
        assert set(result) == {"w", "b"}
    # client 0 gives client 2 no weight: its aggregate ignores client 0 entirely
    assert torch.allclose(results[2]["w"], (0.25 * states[1]["w"] + states[2]["w"]) / 1.25)


def test_personalised_aggregates_identity_keeps_own_model():
    states = three_states()
    results = personalised_aggregates(states, torch.eye(3), ["w"])
    for state, result in zip(states, results):
        assert torch.equal(result["w"], state["w"])


def test_similarity_matrix_clips_and_handles_zero_rows():
    updates = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    sim = similarity_matrix(updates)
    assert torch.allclose(sim[0, 1], torch.tensor(1 / math.sqrt(2)))
    assert sim[0, 2] == 0 and sim[2, 0] == 0  # cosine -1 clipped
    assert torch.equal(sim[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(torch.diagonal(sim), torch.ones(4))
    assert torch.allclose(sim, sim.T) and (sim >= 0).all()


def test_normalise_rows_sum_and_softmax():
    phi = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    summed = normalise_rows(phi, "sum")
    assert torch.allclose(summed[0], torch.tensor([1 / 1.5, 0.5 / 1.5, 0.0]))
    soft = normalise_rows(phi, "softmax")
    e = math.exp(1.0), math.exp(0.5)
    assert torch.allclose(soft[0], torch.tensor([e[0] / sum(e), e[1] / sum(e), 0.0]))
    assert torch.equal(soft[2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(soft.sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError):
        normalise_rows(phi, "max")
    with pytest.raises(ValueError):
        normalise_rows(torch.zeros(2, 2), "softmax")


def test_ema_formula():
    previous = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}
    aggregate = {"w": torch.tensor([5.0, -2.0]), "n": torch.tensor(8)}
    result = ema(previous, aggregate, 0.75)
    assert torch.allclose(result["w"], 0.75 * previous["w"] + 0.25 * aggregate["w"])
    assert result["n"].item() == 5
    assert torch.equal(ema(previous, aggregate, 1.0, keys=["w"])["w"], previous["w"])
    assert list(ema(previous, aggregate, 0.0, keys=["w"])) == ["w"]
    with pytest.raises(ValueError):
        ema(previous, aggregate, 1.5)


def test_row_matrix_puts_a_layers_tensors_side_by_side():
    state = {"w": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": torch.tensor([7.0, 8.0]),
             "n": torch.tensor(3)}
    assert torch.equal(row_matrix(state, ["w", "b", "n"]), torch.tensor([[1.0, 2.0, 3.0, 7.0], [4.0, 5.0, 6.0, 8.0]]))
    odd = {"w": torch.ones(2, 2), "v": torch.zeros(3)}
    assert row_matrix(odd, ["w", "v"]).shape == (1, 7)


def test_rowwise_cosine_hand_cases():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert math.isclose(rowwise_cosine(a, b), (1 + 1 / math.sqrt(2)) / 2)
    assert rowwise_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])) == 0.0  # clipped
    zero_row = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert math.isclose(rowwise_cosine(zero_row, torch.tensor([[1.0, 0.0], [2.0, 0.0]])), 0.5)
    with pytest.raises(ValueError):
        rowwise_cosine(torch.ones(2, 2), torch.ones(2, 3))


def test_softmax_row_mix_hand_formula_counts_unmet_clients_with_weight_one():
    # Client i (s = 1, w = 2) met one partner (s = .5, w = 4); two others it never met hold 1 and 5 (sum 6).
    partners = [(1.0, {"w": torch.tensor([2.0]), "n": torch.tensor(7)}), (0.5, {"w": torch.tensor([4.0]),
                                                                           "n": torch.tensor(1)})]
    mixed = softmax_row_mix(partners, {"w": torch.tensor([6.0], dtype=torch.float64)}, 2, ["w", "n"])
    e, h = math.e, math.exp(0.5)
    assert math.isclose(mixed["w"].item(), (2 * e + 4 * h + 6) / (e + h + 2), rel_tol=1e-6)
    assert mixed["w"].dtype == torch.float32 and mixed["n"].item() == 7  # a counter stays the client's own
    alone = softmax_row_mix(partners[:1], {}, 0, ["w"])
    assert math.isclose(alone["w"].item(), 2.0)
    with pytest.raises(ValueError):
        softmax_row_mix([], {}, 0, ["w"])


def test_round_mode_weights_hand_example():
    # The round-local mode: clipped cosine of the round's updates, rows normalised by their sum.
    updates = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    phi = similarity_matrix(updates)
    c = 1 / math.sqrt(2)
    assert torch.allclose(phi, torch.tensor([[1, c, 0], [c, 1, 0], [0, 0, 1]], dtype=phi.dtype))
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}, {"w": torch.tensor([9.0])}]
    mixed = personalised_aggregates(states, normalise_rows(phi, "sum"), ["w"])
    assert math.isclose(mixed[0]["w"].item(), 3 * c / (1 + c), rel_tol=1e-6)
    assert mixed[2]["w"].item() == 9.0  # dissimilar to everyone: keeps its own


def test_row_matrix_shape_matches_row_matrix():
    for shapes in ([(2, 3), (2,)], [(2, 2), (3,)], [(4, 1, 5, 5), (4,), (4,), ()], [()]):
        state = {f"k{i}": torch.zeros(shape) for i, shape in enumerate(shapes)}
        assert tuple(row_matrix(state, list(state)).shape) == row_matrix_shape(shapes), shapes


# ----- regularised local objectives ------------------------------------------------------------------------------
def test_proximal_and_linear_terms_match_hand_formula_and_differentiate():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([[3.0]], requires_grad=True)}
    anchor = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([[1.0]])}
    distance = squared_distance(w, anchor)
    assert distance.item() == 1 + 4 + 4
    distance.backward()
    assert w["a"].grad.tolist() == [2.0, -4.0] and w["b"].grad.tolist() == [[4.0]]  # 2 (w - anchor)
    assert inner_product(w, {"a": torch.tensor([2.0, -1.0])}).item() == 2 - 2  # only the keys given
    assert squared_distance(w, {}) == 0 and inner_product(w, {}) == 0


def test_mixture_is_the_convex_combination_and_differentiates_in_alpha():
    alpha = torch.tensor(0.25, requires_grad=True)
    personal, shared = {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(3)}, {"w": torch.tensor([0.0, 8.0])}
    mixed = mixture(personal, shared, alpha, ["w"])
    assert list(mixed) == ["w"] and mixed["w"].tolist() == [1.0, 6.0]
    mixed["w"].sum().backward()
    assert alpha.grad.item() == (4 - 0) + (0 - 8)  # d/dalpha = sum(personal - shared)


def test_feddyn_gradient_state_matches_hand_formula():
    updated = feddyn_gradient_state({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([3.0, 0.0])},
                                    {"w": torch.tensor([1.0, 2.0])}, 0.5)
    assert updated["w"].tolist() == [1 - 0.5 * 2, 1 - 0.5 * -2]


def test_feddyn_server_step_matches_hand_formula_over_two_rounds():
    server = {"w": torch.tensor([1.0, 2.0])}
    h, theta = feddyn_server_step({"w": torch.zeros(2)}, server,
                                  [{"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([4.0, 0.0])}], 0.5, 4)
    # h = 0 - 0.5 / 4 * ((2 - 1) + (4 - 1), (2 - 2) + (0 - 2)); theta = mean - h / 0.5
    assert h["w"].tolist() == [-0.5, 0.25] and theta["w"].tolist() == [3 + 1, 1 - 0.5]
    h, theta = feddyn_server_step(h, theta, [{"w": torch.tensor([5.0, 1.0])}, {"w": torch.tensor([3.0, 0.5])}],
                                  0.5, 4)
    assert h["w"].tolist() == [-0.5, 0.25 - 0.125 * 0.5] and theta["w"].tolist() == [4 + 1, 0.75 - 0.375]
    with pytest.raises(ValueError, match="alpha > 0"):
        feddyn_server_step(h, theta, [theta], 0.0, 4)
    with pytest.raises(ValueError, match="no states"):
        feddyn_server_step(h, theta, [], 0.5, 4)
