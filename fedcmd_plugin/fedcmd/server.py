"""FedCMD's server: FedAvg while clients vote for the personalised layer, then decoupled aggregation.

Selection phase (rounds < fedcmd.selection_rounds): plain FedAvg; each upload carries the client's vote; the
tally fixes THE personalised layer at the end of the phase. Decoupled phase: the personalised layer stays on
the clients; layers before it are FedAvg-aggregated; layers after it get per-client aggregates weighted by the
clipped cosine similarity of the clients' personalised-layer updates.
"""
from fedcmd_plugin.fedcmd import selection
from fedcmd_plugin.personalized.server import PersonalizedServer
from fedcmd_plugin.tracking import plots


class FedCMDServer(PersonalizedServer):
    def setup(self, model, clients):
        super().setup(model, clients)
        cmd = self.conf.fedcmd
        candidates = self.configured_blocks("fedcmd.candidate_blocks", cmd.candidate_blocks, self.block_names)
        self.candidates = [self.block_names.index(b) for b in candidates]
        fixed = self.configured_blocks("fedcmd.personal_block", [cmd.personal_block] if cmd.personal_block else [], [])
        self.chosen = fixed[0] if fixed else None
        self.counts = [0] * len(self.block_names)
        self.vote_rounds = []
        self.score_sums, self.score_count = [0.0] * len(self.block_names), 0
        if self.chosen:
            self.recorder.notes["personal_block"] = self.chosen
            self.recorder.notes["personal_block_reason"] = "fixed by fedcmd.personal_block"

    def in_selection(self):
        return self._current_round < self.conf.fedcmd.selection_rounds or self.chosen is None

    def personal_blocks(self):
        return [] if self.in_selection() else [self.chosen]

    def split(self):
        """(before, personal, after) keys of the chosen layer."""
        position = self.block_names.index(self.chosen)
        return (self.keys_of(self.block_names[:position]), self.keys_of([self.chosen]),
                self.keys_of(self.block_names[position + 1:]))

    def round_meta(self):
        cmd = self.conf.fedcmd
        if self.in_selection():
            return {"phase": "selection", "score": self.chosen is None, "candidates": self.candidates,
                    "max_values": cmd.max_values, "score_batches": cmd.score_batches}
        return {"phase": "decoupled", "signature": "update", "signature_keys": self.split()[1]}

    def aggregate(self, uploads):
        if self.in_selection():
            super().aggregate(uploads)
            self.count_votes(uploads)
            if self._current_round + 1 >= self.conf.fedcmd.selection_rounds and self.chosen is None:
                self.decide()
            return
        before, _, after = self.split()
        self.update_global(uploads, before)
        if self.conf.fedcmd.weighted_aggregation:
            self.aggregate_by_similarity(uploads, after, [u.extra["signature"] for u in uploads])
        else:
            self.update_global(uploads, after)

    def count_votes(self, uploads):
        votes = {u.cid: u.meta["vote"] for u in uploads if "vote" in u.meta}
        if not votes:
            return
        for vote in votes.values():
            self.counts[vote] += 1
        for upload in uploads:
            for i, score in enumerate(upload.meta.get("scores", [])):
                self.score_sums[i] += score
            self.score_count += 1 if upload.meta.get("scores") else 0
        round_tally = selection.tally(votes.values(), len(self.block_names))
        self.vote_rounds.append({"round": self._current_round + 1,
                                 "votes": {cid: self.block_names[v] for cid, v in votes.items()},
                                 "tally": dict(zip(self.block_names, round_tally))})
        self.recorder.log_round(self._current_round, {f"votes/{b}": c for b, c in zip(self.block_names, self.counts)})

    def decide(self):
        if not any(self.counts):
            return  # nothing voted yet (e.g. no scored batches): stay in the selection phase
        self.chosen = self.block_names[selection.decide(self.counts)]
        scores = {b: (s / self.score_count if self.score_count else None)
                  for b, s in zip(self.block_names, self.score_sums)}
        reason = (f"{self.counts[self.block_names.index(self.chosen)]} of {sum(self.counts)} votes over "
                  f"{len(self.vote_rounds)} rounds; lowest mean |d_x - d_y| is "
                  f"{min((s, b) for b, s in scores.items() if s is not None)[1]}")
        decision = {"personal_block": self.chosen, "decided_after_round": self._current_round + 1,
                    "tally": dict(zip(self.block_names, self.counts)), "mean_scores": scores,
                    "candidates": [self.block_names[i] for i in self.candidates], "reason": reason,
                    "rounds": self.vote_rounds}
        self.recorder.write_json("fedcmd_selection.json", decision)
        self.recorder.notes.update(personal_block=self.chosen, personal_block_reason=reason)
        self.log.info(f"FedCMD personalised layer: {self.chosen} ({reason})")
        path = self.recorder.plot_path("layer_votes")
        if path:
            plots.bars(self.block_names, self.counts, path, f"FedCMD layer votes -> {self.chosen}", "votes")
