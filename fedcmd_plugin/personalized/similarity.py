"""A sparse, persistent memory of how similar clients are: one value per pair of clients that met.

Personalised servers weigh clients by the similarity of what they uploaded in the same round. The memory keeps
the latest value of every pair that met (a client is similar to itself, 1), so its size grows with the pairs
that trained together, never as N x N over a population of idle clients; pairs that never met read 0.
"""
import numpy as np
import torch

from fedcmd_plugin import aggregate as agg

SELF_SIMILARITY = 1.0


class SimilarityMemory:
    def __init__(self):
        self._rows = {}  # cid -> {partner cid: similarity}, kept symmetric

    def __len__(self):
        """How many distinct pairs of different clients have met."""
        return sum(len(row) for row in self._rows.values()) // 2

    def state(self):
        """{cid: {partner: similarity}} for a checkpoint (`load_state` puts it back)."""
        return {cid: dict(row) for cid, row in self._rows.items()}

    def load_state(self, state):
        self._rows = {cid: dict(row) for cid, row in state.items()}

    def set(self, a, b, value):
        if a == b:
            return
        self._rows.setdefault(a, {})[b] = float(value)
        self._rows.setdefault(b, {})[a] = float(value)

    def record(self, cids, values):
        """Store the round's similarities: `values[i][j]` between `cids[i]` and `cids[j]`."""
        for i, a in enumerate(cids):
            for j in range(i + 1, len(cids)):
                self.set(a, cids[j], values[i][j])

    def has_met(self, cid):
        """Whether `cid` has met another client."""
        return cid in self._rows

    def partners(self, cid):
        """[(partner, similarity)] of `cid`, itself first (1.0), then the clients it met in the order they met."""
        return [(cid, SELF_SIMILARITY), *self._rows.get(cid, {}).items()]

    def get(self, a, b):
        return SELF_SIMILARITY if a == b else self._rows.get(a, {}).get(b, 0.0)

    def top_k(self, cid, k):
        """The `k` most similar other clients of `cid` as [[partner, similarity]] (ties: partner id order)."""
        ranked = sorted(self._rows.get(cid, {}).items(), key=lambda item: (-item[1], item[0]))
        return [[partner, round(value, 4)] for partner, value in ranked[:k]]

    def busiest(self, order, limit):
        """Up to `limit` clients with the most partners (ties: their place in `order`), in `order`'s order.

        This is the documented rule for which clients a bounded heat map shows.
        """
        place = {cid: i for i, cid in enumerate(order)}
        ranked = sorted((cid for cid in order if cid in self._rows), key=lambda c: (-len(self._rows[c]), place[c]))
        chosen = set(ranked[:limit])
        return [cid for cid in order if cid in chosen]

    def dense(self, cids):
        """The memory restricted to `cids` as a dense matrix (for a heat map of a few clients)."""
        return np.array([[self.get(a, b) for b in cids] for a in cids], dtype=float)

    def summary(self, order, k):
        """JSON: pair count and each client's top-k partners (the full matrix is only written on request)."""
        return {"pairs": len(self), "top_k": {cid: self.top_k(cid, k) for cid in order if cid in self._rows}}


class LatestStates:
    """Every client's latest trained tensors of some keys, plus their running float64 sum.

    The sum lets a softmax over the whole population be computed from a client's partners alone: everyone else
    enters as (sum of all) - (sum over partners), and clients that never reported count with a fallback state.
    """

    def __init__(self):
        self.states = {}
        self.total = {}

    def __len__(self):
        return len(self.states)

    def state(self):
        """The latest states and their sum for a checkpoint (`load_state` puts them back)."""
        return {"states": self.states, "total": self.total}

    def load_state(self, state):
        self.states, self.total = dict(state["states"]), dict(state["total"])

    def __contains__(self, cid):
        return cid in self.states

    def update(self, cid, state):
        old = self.states.get(cid)
        for key, tensor in state.items():
            delta = tensor.to(torch.float64) - (old[key].to(torch.float64) if old is not None else 0.0)
            self.total[key] = self.total.get(key, 0.0) + delta
        self.states[cid] = {key: tensor.detach().clone() for key, tensor in state.items()}

    def softmax_mix(self, cid, memory, population, fallback):
        """softmax(row `cid` of `memory` over all `population` clients) applied to their latest states, where a
        client without one holds `fallback` ({key: tensor}, which also names the keys)."""
        partners = memory.partners(cid)
        met = {partner for partner, _ in partners}
        reported_met = [partner for partner in met if partner in self.states]
        rest_count = population - len(met)
        rest_silent = rest_count - (len(self.states) - len(reported_met))
        rest_sum = {}
        for key, default in fallback.items():
            total = self.total.get(key, torch.zeros(default.shape, dtype=torch.float64))
            for partner in reported_met:
                total = total - self.states[partner][key].to(torch.float64)
            rest_sum[key] = total + rest_silent * default.to(torch.float64)
        weighted = [(value, self.states.get(partner, fallback)) for partner, value in partners]
        return agg.softmax_row_mix(weighted, rest_sum, rest_count, list(fallback))
