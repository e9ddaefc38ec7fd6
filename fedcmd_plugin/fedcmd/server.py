"""FedCMD's server: FedAvg while clients vote for the personalised layer, then decoupled aggregation.

Selection phase (the first `fedcmd.selection_rounds` rounds, by default 10% of `server.rounds` as in the paper's
20 of 200): plain FedAvg; each upload carries the client's vote; the tally fixes THE personalised layer at the
end of the phase. Decoupled phase: the personalised layer stays on the clients; layers before it are
FedAvg-aggregated; layers after it are aggregated per client by the similarity of the clients' personalised-layer
updates, in one of two modes (`fedcmd.aggregation`):

* ``reference``, as the paper's code does it: a persistent memory holds, for every pair of clients that met in a
  round, the clipped mean row-wise cosine of their updates. Each client receives, whenever it is dispatched or
  evaluated, a softmax over its whole memory row (clients it never met count 0) of every client's latest
  trained parameters; a client that has not trained since the decision counts with the global model's values.
* ``round``, as the paper's text puts it: only the round's uploaders are mixed, with the clipped cosine of their
  flattened updates normalised per row (`personalization.similarity_norm`).
"""
import numpy as np
import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.fedcmd.client import FedCMDSettings, Scoring
from fedcmd_plugin.personalized.layers import split_keys
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.personalized.similarity import LatestStates
from fedcmd_plugin.tracking import plots

AGGREGATIONS = ("reference", "round")
DEFAULT_SELECTION_SHARE = 0.1  # the paper selects during 20 of its 200 rounds


def selection_rounds(conf):
    """`fedcmd.selection_rounds`, or 10% of `server.rounds` (at least 1) when it is null."""
    configured = conf.fedcmd.selection_rounds
    if configured is not None:
        return int(configured)
    return max(1, int(round(conf.server.rounds * DEFAULT_SELECTION_SHARE)))


class FedCMDServer(PersonalizedServer):
    def setup(self, model, clients):
        cmd = self.conf.fedcmd
        self.selection_rounds = selection_rounds(self.conf)
        if cmd.personal_block is None and self.conf.server.rounds <= self.selection_rounds:
            raise ConfigError(f"FedCMD selects its personalised layer during fedcmd.selection_rounds="
                              f"{self.selection_rounds} rounds, so server.rounds={self.conf.server.rounds} leaves no "
                              f"decoupled round: raise server.rounds, lower fedcmd.selection_rounds, or fix the "
                              f"layer with fedcmd.personal_block")
        super().setup(model, clients)
        candidates = self.configured_blocks("fedcmd.candidate_blocks", cmd.candidate_blocks, self.block_names)
        self.candidates = [self.block_names.index(b) for b in candidates]
        preferred = None
        if cmd.preferred_block is not None:
            if cmd.preferred_block not in candidates:
                raise ConfigError(f"config key 'fedcmd.preferred_block' is {cmd.preferred_block!r}, which is not "
                                  f"a candidate block ({', '.join(candidates)})")
            preferred = self.block_names.index(cmd.preferred_block)
        self.rule = selection.Rule(cmd.distance, tuple(self.candidates), preferred)
        self.diagnostics = selection.diagnostic_rules(self.block_names)
        fixed = self.configured_blocks("fedcmd.personal_block", [cmd.personal_block] if cmd.personal_block else [], [])
        self.chosen = fixed[0] if fixed else None
        self.counts = [0] * len(self.block_names)
        self.rule_counts = {name: [0] * len(self.block_names) for name in self.diagnostics}
        self.score_rows = {distance: [] for distance in selection.DISTANCES}
        self.ties = {distance: 0 for distance in selection.DISTANCES}  # scored batches with a tie at the minimum
        self.scored_batches = 0
        self.vote_rounds = []
        self.latest = LatestStates()  # reference mode: every client's latest trained layers after the personal one
        if self.chosen:
            self.recorder.notes["personal_block"] = self.chosen
            self.recorder.notes["personal_block_reason"] = "fixed by fedcmd.personal_block"

    def algorithm_state(self):
        """The vote tally and its diagnostics, the decision and (reference mode) every client's latest layers; the
        similarity memory and per-client aggregates come from the personalised server."""
        return {**super().algorithm_state(), "fedcmd": {
            "chosen": self.chosen, "counts": self.counts, "rule_counts": self.rule_counts, "ties": self.ties,
            "score_rows": {d: [torch.from_numpy(row) for row in rows] for d, rows in self.score_rows.items()},
            "scored_batches": self.scored_batches, "vote_rounds": self.vote_rounds, "latest": self.latest.state()}}

    def load_algorithm_state(self, state):
        super().load_algorithm_state(state)
        saved = state["fedcmd"]
        self.chosen, self.counts, self.rule_counts = saved["chosen"], saved["counts"], saved["rule_counts"]
        self.ties, self.scored_batches, self.vote_rounds = saved["ties"], saved["scored_batches"], saved["vote_rounds"]
        self.score_rows = {d: [row.numpy() for row in rows] for d, rows in saved["score_rows"].items()}
        self.latest.load_state(saved["latest"])

    def in_selection(self):
        return self._current_round < self.selection_rounds or self.chosen is None

    def personal_blocks(self):
        return [] if self.in_selection() else [self.chosen]

    def split(self):
        """(before, personal, after) keys of the chosen layer."""
        return split_keys(self.state_keys, self.block_of, self.block_names, self.chosen)

    def algorithm_settings(self):
        cmd = self.conf.fedcmd
        if self.in_selection():
            rule = self.rule
            scoring = Scoring(rule.distance, tuple(int(b) for b in rule.candidates), rule.preferred,
                              int(cmd.max_values), int(cmd.score_batches)) if self.chosen is None else None
            return FedCMDSettings("selection", scoring=scoring)
        return FedCMDSettings("decoupled", "update", tuple(self.split()[1]))

    # ----- aggregation --------------------------------------------------------------------------------------------
    def mixes_by_reference(self):
        cmd = self.conf.fedcmd
        return not self.in_selection() and cmd.weighted_aggregation and cmd.aggregation == "reference"

    def aggregate(self, uploads):
        if self.in_selection():
            super().aggregate(uploads)
            self.count_votes(uploads)
            if self._current_round + 1 >= self.selection_rounds and self.chosen is None:
                self.decide()
            return
        before, _, after = self.split()
        self.update_global(uploads, before)
        if self.mixes_by_reference():
            self.remember(uploads, after)
        elif self.conf.fedcmd.weighted_aggregation:
            self.aggregate_by_similarity(uploads, after, [u.extra["signature"] for u in uploads])
            return
        self.update_global(uploads, after)

    def remember(self, uploads, after):
        """Reference mode: the round's pair similarities into the memory, the uploads' layers into `latest`."""
        signatures = [u.extra["signature"] for u in uploads]
        values = [[agg.rowwise_cosine(a, b) for b in signatures] for a in signatures]
        self.similarity.record([u.cid for u in uploads], values)
        self.recorder.image("similarity/round", np.clip(np.array(values), 0, 1), self._current_round)
        for upload in uploads:
            self.latest.update(upload.cid, {k: upload.state[k] for k in after})

    def shared_state(self):
        """Reference mode: every client that met no one and has not trained since the decision gets the same mix
        (its memory row holds only itself), so that mix is part of the shared state."""
        state = super().shared_state()
        if self.mixes_by_reference():
            state.update(self.reference_mix(None))
        return state

    def own_state(self, cid):
        own = super().own_state(cid)
        if self.mixes_by_reference() and (self.similarity.has_met(cid) or cid in self.latest):
            own.update(self.reference_mix(cid))
        return own

    def reference_mix(self, cid):
        """Client `cid`'s layers after the personal one: softmax over its memory row of every client's latest
        (None: any client that met no one and has no latest layers)."""
        after = self.split()[2]
        if not after:
            return {}
        state = self._model.state_dict()
        fallback = {k: state[k] for k in after}  # what a client that has not trained since the decision holds
        return self.latest.softmax_mix(cid, self.similarity, len(self.client_order), fallback)

    # ----- selection --------------------------------------------------------------------------------------------
    def count_votes(self, uploads):
        voters = [u for u in uploads if u.algorithm is not None]
        if not voters:
            return
        votes = {u.cid: u.algorithm.vote for u in voters}
        round_tally = selection.tally(votes.values(), len(self.block_names))
        self.counts = [a + b for a, b in zip(self.counts, round_tally)]
        for upload in voters:
            batches = upload.algorithm.batch_scores.batches()
            self.scored_batches += len(batches)
            for distance in selection.DISTANCES:
                self.score_rows[distance].append(np.mean([b[distance] for b in batches], axis=0))
                self.ties[distance] += sum(selection.tied_at_minimum(b[distance], self.candidates) for b in batches)
            for name, rule in self.diagnostics.items():
                self.rule_counts[name][rule.vote(batches)] += 1
        self.vote_rounds.append({"round": self._current_round + 1,
                                 "votes": {cid: self.block_names[v] for cid, v in votes.items()},
                                 "tally": dict(zip(self.block_names, round_tally))})
        self.recorder.log_round(self._current_round, {f"votes/{b}": c for b, c in zip(self.block_names, self.counts)})

    def decide(self):
        if not any(self.counts):
            return  # nothing voted yet (e.g. no scored batches): stay in the selection phase
        names = self.block_names
        self.chosen = names[selection.decide(self.counts)]
        statistics = {d: selection.score_statistics(rows, names) for d, rows in self.score_rows.items()}
        scores = statistics[self.rule.distance]
        lowest = min((scores[names[i]]["mean"], names[i]) for i in self.candidates)[1]
        margin = selection.vote_margin(self.counts, names)
        reason = (f"{margin['winner_votes']} of {margin['total_votes']} votes over {len(self.vote_rounds)} rounds, "
                  f"{margin['margin']:.0%} ahead of {margin['runner_up']}; lowest mean |d_x - d_y| "
                  f"({self.rule.distance}) among the candidates is {lowest}")
        rules = {name: {"decision": names[selection.decide(counts)], "tally": dict(zip(names, counts)),
                        "margin": round(selection.vote_margin(counts, names)["margin"], 4)}
                 for name, counts in self.rule_counts.items()}
        decision = {"personal_block": self.chosen, "decided_after_round": self._current_round + 1,
                    "selection_rounds": self.selection_rounds,
                    "rule": {"distance": self.rule.distance, "candidates": [names[i] for i in self.candidates],
                             "preferred": names[self.rule.preferred] if self.rule.preferred is not None else None},
                    "tally": dict(zip(names, self.counts)), "vote_margin": margin, "mean_scores": statistics,
                    "tied_batch_share": {d: round(t / max(self.scored_batches, 1), 4) for d, t in self.ties.items()},
                    "reason": reason, "rules": rules, "rounds": self.vote_rounds}
        self.recorder.write_json("fedcmd_selection.json", decision)
        self.recorder.notes.update(personal_block=self.chosen, personal_block_reason=reason,
                                   vote_margin=round(margin["margin"], 4),
                                   selection_scores={b: round(s["mean"], 5) for b, s in scores.items()},
                                   selection_score_std={b: round(s["std"], 5) for b, s in scores.items()},
                                   rule_decisions={name: r["decision"] for name, r in rules.items()})
        self.log.info(f"FedCMD personalised layer: {self.chosen} ({reason})")
        path = self.recorder.plot_path("layer_votes")
        if path:
            plots.bars(names, self.counts, path, f"FedCMD layer votes -> {self.chosen}", "votes")
