"""FedUReID's cloud: FedAvg of backbone + embedding, then the personalised update, where each edge receives an
EMA of its own trained model and the aggregate (theta_k <- beta * theta_k + (1 - beta) * theta).

`fedureid.federated: false` gives Local-only BUC (no aggregation); with every personalisation switch off the
same code is the paper's Baseline (FedAvg + BUC)."""
import statistics

import numpy as np

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.errors import DataError
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.fedureid.client import FedUReIDSettings
from fedcmd_plugin.tracking import plots

REID_METRICS = ("mAP", "rank1", "rank5", "rank10")


class FedUReIDServer(FederatedServer):
    def setup(self, model, clients):
        super().setup(model, clients)
        self.edge_states = {}  # cid -> the model the edge gets next round (its own trained one when local-only)
        self.map_history = {}  # cid -> [(round, mAP)]
        self.images_total = 0
        self.edge_images = {}  # cid -> images processed in local training so far (the compute measure)
        self.reference_images = self.median_edge_size()

    def algorithm_state(self):
        """The models the edges get next round, the compute count and the mAP history (the edges' memories and
        pseudo labels are their own kept state)."""
        return {**super().algorithm_state(), "fedureid": {
            "edge_states": self.edge_states, "edge_images": self.edge_images,
            "map_history": {cid: [list(point) for point in points] for cid, points in self.map_history.items()}}}

    def load_algorithm_state(self, state):
        super().load_algorithm_state(state)
        saved = state["fedureid"]
        self.edge_states, self.edge_images = dict(saved["edge_states"]), dict(saved["edge_images"])
        self.images_total = sum(self.edge_images.values())
        self.map_history = {cid: [tuple(point) for point in points] for cid, points in saved["map_history"].items()}

    def median_edge_size(self):
        try:
            train = self.experiment.data.train
        except DataError:
            if self.is_remote:  # a remote server need not hold the edges' data; edges then use their own size
                return None
            raise
        return float(statistics.median(train.size(cid) for cid in train.users))

    def algorithm_settings(self):
        f = self.conf.fedureid
        return FedUReIDSettings(
            personalized_epoch=bool(f.personalized_epoch), personalized_clustering=bool(f.personalized_clustering),
            merge_percent=float(f.merge_percent), size_penalty=float(f.size_penalty),
            target_clusters=None if f.target_clusters is None else int(f.target_clusters),
            remaining_steps=int(self.conf.server.rounds - self._current_round), temperature=float(f.temperature),
            momentum=float(f.memory_momentum),
            reference_images=None if self.reference_images is None else float(self.reference_images),
            patience=int(f.patience), precision_threshold=float(f.precision_threshold),
            saturation=float(f.precision_saturation))

    def own_state(self, cid):
        """The edge's own model of the personalised update (or of local-only training), once it has one."""
        return dict(self.edge_states.get(cid, {}))

    def aggregate(self, uploads):
        f = self.conf.fedureid
        for u in uploads:
            self.edge_images[u.cid] = self.edge_images.get(u.cid, 0) + u.report.images
        self.images_total = sum(self.edge_images.values())
        reports = [u.algorithm for u in uploads]
        if reports and all(r is not None for r in reports):
            self.recorder.log_round(self._current_round, {key: float(np.mean([getattr(r, key) for r in reports]))
                                                          for key in ("epochs", "train_precision", "clusters", "merges",
                                                                      "images_extracted", "relabel_seconds")})
        if not f.federated:
            for u in uploads:
                self.edge_states[u.cid] = u.state
            return
        super().aggregate(uploads)
        if not f.personalized_update:
            self.edge_states.clear()
            return
        merged = self._model.state_dict()
        for u in uploads:
            self.edge_states[u.cid] = agg.ema(u.state, merged, f.ema_beta)
            # Integer buffers (BatchNorm's counter) take this round's aggregate: a copy, not the global model's
            # tensor that later rounds overwrite (which a checkpoint could not restore).
            for key in merged:
                self.edge_states[u.cid].setdefault(key, merged[key].clone())

    def summarise_evaluation(self, results):
        summary = {m: float(np.mean([r[m] for r in results])) for m in REID_METRICS}
        for key in ("nmi", "pairwise_f", "clusters"):
            values = [r[key] for r in results if key in r]
            if values:
                summary[key] = float(np.mean(values))
        summary["images_processed"] = self.images_total
        summary["evaluated_clients"] = len(results)
        for r in results:
            self.map_history.setdefault(r["cid"], []).append((self._current_round + 1, r["mAP"]))
            summary[f"mAP/{r['cid']}"] = r["mAP"]
            summary[f"rank1/{r['cid']}"] = r["rank1"]
            summary[f"images/{r['cid']}"] = self.edge_images.get(r["cid"], 0)
        return summary

    def finish(self):
        last = self.last_evaluation
        if last:
            for r in last["clients"]:
                self.log.info(f"  edge {r['cid']}: mAP {r['mAP']:.2f}  Rank-1 {r['rank1']:.2f}  Rank-5 {r['rank5']:.2f}"
                              f"  Rank-10 {r['rank10']:.2f}" + (f"  NMI {r['nmi']:.3f}" if "nmi" in r else "")
                              + f"  images {self.edge_images.get(r['cid'], 0)}")
            self.recorder.notes["images_processed"] = self.images_total
            path = self.recorder.plot_path("cmc")
            if path:
                plots.curves({r["cid"]: (list(range(1, len(r["cmc"]) + 1)), r["cmc"]) for r in last["clients"]},
                             path, "CMC per edge (final round)", "rank", "matching rate (%)")
            path = self.recorder.plot_path("map_per_round")
            if path:
                plots.curves({cid: tuple(zip(*points)) for cid, points in self.map_history.items()}, path,
                             "mAP per edge", "round", "mAP (%)")
        super().finish()
