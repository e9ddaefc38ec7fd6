"""Aggregation maths as pure functions over state dicts (``dict[str, Tensor]``) and weights.

They know nothing of EasyFL, gRPC or ranks, so standalone, distributed and remote runs share them. All mixing is
done in float64 and cast back to each tensor's dtype. Non-floating tensors (e.g. BatchNorm's
``num_batches_tracked``) get the weighted mean rounded to the nearest integer: a counter stays a plausible
count that every client contributed to (for bool tensors this is a weighted majority).
"""
import math

import torch

NORMALISATIONS = ("sum", "softmax")


def _row_normalised(weights):
    """Weights as a float64 matrix whose rows sum to 1; rows must be non-negative with a positive sum."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.dim() == 1:
        weights = weights.unsqueeze(0)
    if (weights < 0).any():
        raise ValueError("aggregation weights must be non-negative")
    totals = weights.sum(dim=1, keepdim=True)
    if (totals <= 0).any():
        raise ValueError("aggregation weights must have a positive sum")
    return weights / totals


def _mix(tensors, weights):
    """Row r of the result is sum_j weights[r, j] * tensors[j], in the tensors' dtype and device."""
    first = tensors[0]
    stacked = torch.stack([t.to(first.device, torch.float64) for t in tensors]).reshape(len(tensors), -1)
    mixed = (weights.to(first.device) @ stacked).reshape(weights.shape[0], *first.shape)
    if not first.is_floating_point():
        mixed = mixed.round()
    return mixed.to(first.dtype)


def _combine(states, weights, keys):
    """One state dict per row of `weights` (rows normalised), over `keys` (default: the first state's keys)."""
    if not states:
        raise ValueError("nothing to aggregate: no states")
    weights = _row_normalised(weights)
    if weights.shape[1] != len(states):
        raise ValueError(f"{weights.shape[1]} weights per row for {len(states)} states")
    keys = list(states[0].keys()) if keys is None else list(keys)
    results = [{} for _ in range(weights.shape[0])]
    for key in keys:
        mixed = _mix([state[key] for state in states], weights)
        for result, tensor in zip(results, mixed):
            result[key] = tensor
    return results


def weighted_average(states, weights, keys=None):
    """Weighted mean of `states` (FedAvg with sample counts as weights); returns only `keys`."""
    return _combine(states, weights, keys)[0]


def personalised_aggregates(states, phi, keys):
    """Client i's aggregate w_i = sum_j phi_ij w_j / sum_j phi_ij for every row i of `phi` (n x n)."""
    phi = torch.as_tensor(phi)
    if phi.dim() != 2 or phi.shape[0] != len(states):
        raise ValueError(f"phi must be {len(states)} x {len(states)}, got {tuple(phi.shape)}")
    return _combine(states, phi, keys)


def similarity_matrix(updates):
    """max(0, cosine similarity) between rows of `updates` (n x d); zero rows are similar only to themselves."""
    rows = updates.to(torch.float64)
    norms = rows.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, rows / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(rows))
    similarity = (unit @ unit.T).clamp(0.0, 1.0)
    similarity.fill_diagonal_(1.0)
    return similarity.to(updates.dtype if updates.is_floating_point() else torch.get_default_dtype())


def normalise_rows(phi, mode="sum"):
    """Rows of a clipped similarity matrix turned into aggregation weights that sum to 1.

    ``sum`` divides each row by its sum (the diagonal 1 keeps it positive). ``softmax`` exponentiates only the
    positive entries: a client whose similarity was clipped to 0 keeps weight 0, as in ``sum`` mode, instead of
    getting exp(0) = 1 share from a softmax over all clients.
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"similarity normalisation must be one of {', '.join(NORMALISATIONS)}, got {mode!r}")
    if (phi < 0).any() or not (phi > 0).any(dim=1).all():
        raise ValueError("phi must be non-negative with a positive entry in every row")
    if mode == "sum":
        return phi / phi.sum(dim=1, keepdim=True)
    masked = phi.masked_fill(phi <= 0, float("-inf"))
    return torch.softmax(masked, dim=1)


def ema(previous, aggregate, beta, keys=None):
    """theta <- beta * previous + (1 - beta) * aggregate over `keys` (default: previous's keys); returns only those."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return _combine([previous, aggregate], [beta, 1.0 - beta], keys)[0]


def softmax_row_mix(partners, rest_sum, rest_count, keys):
    """One row of a softmax over *all* clients' similarities, applied to their parameters.

    The reference FedCMD mixes every client's latest parameters with weights softmax(S_i), where S_i is row i of
    a similarity memory in which clients that never met i read 0, so each of them still gets exp(0) = 1 share.
    Only the partners that met i are listed; the others enter as one sum, which keeps the cost linear in the
    partners rather than in the population.

    Args:
        partners: [(s_ij, state_j)] for the clients that met i, i itself first (s_ii = 1).
        rest_sum: {key: sum of the other clients' tensors}, float64 (ignored when rest_count is 0).
        rest_count: how many other clients there are.
        keys: the keys to mix.
    Returns:
        {key: (sum_j exp(s_ij) theta_j + rest_sum) / (sum_j exp(s_ij) + rest_count)} in each tensor's dtype.
    """
    if not partners:
        raise ValueError("a softmax row needs at least the client itself as a partner")
    if rest_count < 0:
        raise ValueError(f"rest_count must be >= 0, got {rest_count}")
    similarities = torch.tensor([s for s, _ in partners], dtype=torch.float64)
    shift = max(float(similarities.max()), 0.0)  # the absent entries are 0: shift by the row's true maximum
    weights = torch.exp(similarities - shift)
    rest_weight = math.exp(-shift)
    total = float(weights.sum()) + rest_count * rest_weight
    mixed = {}
    for key in keys:
        own = partners[0][1][key]
        if not own.is_floating_point():
            mixed[key] = own.clone()  # counters are not learned: the client keeps its own
            continue
        stacked = torch.stack([state[key].to(own.device, torch.float64).reshape(-1) for _, state in partners])
        value = weights.to(own.device) @ stacked
        if rest_count:
            value = value + rest_weight * rest_sum[key].to(own.device, torch.float64).reshape(-1)
        mixed[key] = (value / total).reshape(own.shape).to(own.dtype)
    return mixed


def row_matrix(state, keys):
    """The floating tensors of `keys` as one matrix with a row per output unit.

    Tensors sharing the first tensor's leading dimension are reshaped to (rows, -1) and put side by side, so a
    linear layer gives [W | b] and a convolution with BatchNorm gives one row per channel. A layer whose tensors
    disagree on the leading dimension becomes a single row (its flattened values).
    """
    tensors = [state[key] for key in keys if state[key].is_floating_point() and state[key].dim() > 0]
    if not tensors:
        return torch.zeros(1, 0)
    rows = tensors[0].shape[0]
    if any(t.shape[0] != rows for t in tensors):
        return torch.cat([t.reshape(-1) for t in tensors]).unsqueeze(0)
    return torch.cat([t.reshape(rows, -1) for t in tensors], dim=1)


def row_matrix_shape(shapes):
    """The shape `row_matrix` gives for floating tensors of these shapes (what a signature upload must have)."""
    shapes = [tuple(shape) for shape in shapes if len(shape) > 0]
    if not shapes:
        return (1, 0)
    rows, total = shapes[0][0], sum(math.prod(shape) for shape in shapes)
    if any(shape[0] != rows for shape in shapes):
        return (1, total)
    return (rows, total // rows if rows else 0)


def rowwise_cosine(a, b):
    """max(0, mean over rows r of cos(a_r, b_r)) for two (rows x d) matrices; a zero row contributes 0."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"row-wise cosine needs two matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(dim=1)
    cosines = torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dots))
    return max(0.0, float(cosines.mean())) if len(cosines) else 0.0


# ----- FedFomo: first-order weights of downloaded models ------------------------------------------------------
def state_distance(a, b, keys):
    """Euclidean distance between two states over `keys` (all their values as one vector), in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for key in keys:
        diff = a[key].to(torch.float64) - b[key].to(a[key].device, torch.float64)
        total = total + (diff * diff).sum().cpu()
    return float(total.sqrt())


def fomo_weights(own_loss, losses, distances):
    """FedFomo's weight of each downloaded model n: w_n = (L(own) - L(theta_n)) / ||theta_n - own||, the
    validation-loss decrease per unit step towards theta_n (negative when theta_n is worse); 0 for a model equal
    to the client's own, which offers no direction."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    distances = torch.as_tensor(distances, dtype=torch.float64)
    if losses.dim() != 1 or losses.shape != distances.shape:
        raise ValueError(f"one loss and one distance per model, got {tuple(losses.shape)} and "
                         f"{tuple(distances.shape)}")
    if (distances < 0).any():
        raise ValueError("distances must be non-negative")
    gains = float(own_loss) - losses
    return torch.where(distances > 0, gains / distances.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.zeros_like(gains))


def fomo_mixing(weights):
    """The step FedFomo takes towards each model: max(0, w_n) normalised to sum 1; all zeros when no model beats
    the client's own (the client then keeps its own)."""
    positive = torch.as_tensor(weights, dtype=torch.float64).clamp_min(0.0)
    total = positive.sum()
    return positive / total if total > 0 else positive


def fomo_update(own, models, mixing, keys):
    """theta_own + sum_n m_n (theta_n - theta_own) over `keys`, for steps m_n >= 0 with sum_n m_n <= 1."""
    mixing = torch.as_tensor(mixing, dtype=torch.float64).reshape(-1)
    if len(mixing) != len(models):
        raise ValueError(f"{len(mixing)} steps for {len(models)} models")
    if (mixing < 0).any() or float(mixing.sum()) > 1.0 + 1e-9:
        raise ValueError("steps must be non-negative with a sum of at most 1")
    own_weight = max(0.0, 1.0 - float(mixing.sum()))
    return _combine([own, *models], torch.cat([torch.tensor([own_weight], dtype=torch.float64), mixing]), keys)[0]


def affinity_increment(weights):
    """What one report adds to a client's affinity row: w_n / sum_m |w_m|, each in [-1, 1] whatever the scale
    of the losses (zeros when every weight is 0)."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    total = weights.abs().sum()
    return weights / total if total > 0 else torch.zeros_like(weights)


# ----- FedAP: similarity of BatchNorm statistics ------------------------------------------------------------------
def gaussian_wasserstein(a, b):
    """Distance between two clients' BatchNorm statistics `a`, `b` ([(mean, var)] per layer): the sum over layers
    of the 2-Wasserstein distance between the diagonal Gaussians N(mean, diag var),
    sqrt(||mean_a - mean_b||^2 + ||sqrt(var_a) - sqrt(var_b)||^2)."""
    if len(a) != len(b):
        raise ValueError(f"statistics of {len(a)} and {len(b)} layers")
    total = 0.0
    for (mean_a, var_a), (mean_b, var_b) in zip(a, b):
        mean_a, mean_b = mean_a.to(torch.float64), mean_b.to(torch.float64)
        var_a, var_b = var_a.to(torch.float64), var_b.to(torch.float64)
        if mean_a.shape != mean_b.shape or var_a.shape != var_b.shape or mean_a.shape != var_a.shape:
            raise ValueError("the layers' means and variances must agree in shape")
        if (var_a < 0).any() or (var_b < 0).any():
            raise ValueError("variances must be non-negative")
        squared = ((mean_a - mean_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
        total += math.sqrt(float(squared))
    return total


def fedap_weights(distances, momentum):
    """FedAP's aggregation weights from the clients' pairwise distances (n x n): W_ii = momentum, and the rest of
    row i, 1 - momentum, split in proportion to 1 / d_ij; clients at distance 0 from i share it equally (the limit
    of 1 / d). One client alone keeps its own model (W = [[1]])."""
    d = torch.as_tensor(distances, dtype=torch.float64)
    if d.dim() != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distances must be a non-empty square matrix, got {tuple(d.shape)}")
    if (d < 0).any():
        raise ValueError("distances must be non-negative")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    n = d.shape[0]
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    others = ~torch.eye(n, dtype=torch.bool)
    same = others & (d == 0)
    inverse = torch.where(others & (d > 0), 1.0 / d.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(d))
    share = torch.where(same.any(dim=1, keepdim=True), same.to(torch.float64), inverse)
    weights = share / share.sum(dim=1, keepdim=True) * (1.0 - momentum)
    weights.fill_diagonal_(momentum)
    return weights


# ----- regularised local objectives and their state (FedProx, Ditto, FedDyn, APFL) ---------------------------------
# These act on {name: tensor} dicts of parameters, stay in the tensors' dtype and are differentiable, so the same
# function is the training loss term and its hand-checkable value.
def squared_distance(state, anchor):
    """sum over anchor's keys of ||state[k] - anchor[k]||^2: the proximal term of FedProx, Ditto and FedDyn."""
    return sum(((state[key] - value) ** 2).sum() for key, value in anchor.items())


def inner_product(state, other):
    """sum over other's keys of <state[k], other[k]> (FedDyn's linear term)."""
    return sum((state[key] * value).sum() for key, value in other.items())


def mixture(personal, shared, alpha, keys):
    """{k: alpha * personal[k] + (1 - alpha) * shared[k]} over `keys`: APFL's mixed model, differentiable in the
    models and in alpha (a number or a 0-dim tensor)."""
    return {key: alpha * personal[key] + (1 - alpha) * shared[key] for key in keys}


def feddyn_gradient_state(gradient, trained, server, alpha):
    """A FedDyn client's linear-term state after its round: g_k <- g_k - alpha * (theta_k - theta), with theta the
    server model the round started from (Acar et al. 2021, Algorithm 1), over gradient's keys."""
    return {key: value - alpha * (trained[key] - server[key]) for key, value in gradient.items()}


def feddyn_server_step(h, server, states, alpha, clients):
    """FedDyn's server update over h's keys (Acar et al. 2021, Algorithm 1), in float64:
    h <- h - alpha / m * sum_k (theta_k - theta) over the round's states theta_k, with m = `clients` (every client
    of the federation, not only the round's); theta <- mean_k theta_k - h / alpha (the plain mean over the round's
    clients). Returns (h, theta), each in the dtype of its input."""
    if not states:
        raise ValueError("nothing to aggregate: no states")
    if alpha <= 0 or clients < len(states):
        raise ValueError(f"FedDyn needs alpha > 0 and at least as many clients as states; got alpha={alpha}, "
                         f"{clients} clients, {len(states)} states")
    new_h, theta = {}, {}
    for key, previous in h.items():
        trained = torch.stack([state[key].to(torch.float64) for state in states])
        drift = (trained - server[key].to(torch.float64)).sum(dim=0)
        updated = previous.to(torch.float64) - alpha / clients * drift
        new_h[key] = updated.to(previous.dtype)
        theta[key] = (trained.mean(dim=0) - updated / alpha).to(server[key].dtype)
    return new_h, theta
