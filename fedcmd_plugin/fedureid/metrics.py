"""Person ReID evaluation (mAP, CMC) and pseudo-label quality (NMI, pairwise F-score).

Protocol of `evaluate` (Market-1501's): gallery images are ranked by squared euclidean distance to the query
(for L2-normalised features the same order as cosine similarity). For each query, gallery images with the
query's pid *and* camera are removed (an identity seen from the same camera is too easy), as is every gallery
image with junk pid -1. Distractors (pid 0) stay and are never matches. Queries left without any match are
skipped and counted. AP is the mean of the precision at the rank of each match (no interpolation); CMC at
rank k is the fraction of queries whose first match is within the first k kept gallery images. Metrics are
fractions in [0, 1].
"""
import numpy as np
import torch

from fedcmd_plugin.errors import DataError

JUNK_PID = -1
QUERY_CHUNK = 256  # queries ranked at once: memory is QUERY_CHUNK x gallery size


def evaluate(query_feats, query_pids, query_cams, gallery_feats, gallery_pids, gallery_cams, ranks=(1, 5, 10),
             max_rank=50):
    """mAP and CMC of query vs gallery; returns a dict (see module docstring for the protocol).

    Keys: ``mAP``, ``cmc`` (numpy array, CMC at ranks 1..max_rank), ``rank<k>`` for each k in `ranks`,
    ``num_queries`` (evaluated) and ``skipped_queries`` (no valid match in the gallery).
    """
    qf, gf = torch.as_tensor(query_feats).float(), torch.as_tensor(gallery_feats).float()
    q_pid, q_cam, g_pid, g_cam = (torch.as_tensor(v).long().to(qf.device).reshape(-1)
                                  for v in (query_pids, query_cams, gallery_pids, gallery_cams))
    _check_lengths(qf, q_pid, q_cam, "query")
    _check_lengths(gf, g_pid, g_cam, "gallery")
    if qf.shape[1] != gf.shape[1]:
        raise DataError(f"evaluate: query features have dimension {qf.shape[1]}, gallery {gf.shape[1]}")
    if gf.shape[0] == 0:
        raise DataError("evaluate gallery: expected at least one gallery image, got none")
    if not ranks or min(ranks) < 1:
        raise DataError(f"evaluate ranks: expected positive ranks, got {ranks!r}")
    max_rank = max(max_rank, *ranks)
    gf = gf.to(qf.device)

    ap_sum, cmc_sum, evaluated = 0.0, torch.zeros(max_rank, dtype=torch.float64), 0
    for start in range(0, qf.shape[0], QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        ap, first_hit = _rank_chunk(qf[start:stop], q_pid[start:stop], q_cam[start:stop], gf, g_pid, g_cam)
        found = first_hit >= 0
        ap_sum += float(ap[found].sum())
        hits = first_hit[found]
        # first_hit is a 0-based rank among kept gallery images; CMC(k) counts first hits at ranks < k.
        cmc_sum += torch.bincount(hits.clamp(max=max_rank).cpu(), minlength=max_rank + 1)[:max_rank].double()
        evaluated += int(found.sum())
    skipped = qf.shape[0] - evaluated
    if evaluated == 0:
        raise DataError(f"evaluate: none of the {skipped} queries has a valid match in the gallery")
    cmc = (torch.cumsum(cmc_sum, 0) / evaluated).numpy()
    result = {"mAP": ap_sum / evaluated, "cmc": cmc, "num_queries": evaluated, "skipped_queries": skipped}
    result.update({f"rank{k}": float(cmc[k - 1]) for k in ranks})
    return result


def _check_lengths(feats, pids, cams, name):
    """One-line error when features, pids and cameras of one side disagree."""
    if feats.dim() != 2 or not feats.shape[0] == pids.numel() == cams.numel():
        raise DataError(f"evaluate {name}: expected [N, D] features with N pids and N cameras, got features "
                        f"{tuple(feats.shape)}, {pids.numel()} pids, {cams.numel()} cameras")


def _rank_chunk(qf, q_pid, q_cam, gf, g_pid, g_cam):
    """AP per query and 0-based rank of the first match among kept gallery images (-1: no match)."""
    dist = torch.cdist(qf, gf).square_()
    order = torch.argsort(dist, dim=1, stable=True)
    pid, cam = g_pid[order], g_cam[order]
    same_pid = pid == q_pid[:, None]
    kept = (pid != JUNK_PID) & ~(same_pid & (cam == q_cam[:, None]))
    match = same_pid & kept
    kept_rank = torch.cumsum(kept, dim=1)  # 1-based rank among kept images, valid where kept
    match_count = torch.cumsum(match, dim=1)
    precision = match_count / kept_rank.clamp(min=1)
    num_matches = match.sum(dim=1)
    ap = (precision * match).sum(dim=1) / num_matches.clamp(min=1)
    first = torch.argmax(match.int(), dim=1)  # first True (0 when there is none)
    first_hit = torch.where(num_matches > 0, kept_rank.gather(1, first[:, None]).squeeze(1) - 1,
                            torch.full_like(num_matches, -1))
    return ap, first_hit


def pseudo_label_quality(pred_labels, true_ids):
    """How well pseudo labels recover the hidden identities: NMI and pairwise precision/recall/F-score.

    Pairwise: over all image pairs, precision = share of pairs put in one cluster that have one identity,
    recall = share of same-identity pairs put in one cluster; with no such pairs a ratio counts as 1.
    """
    pred = np.asarray(torch.as_tensor(pred_labels).cpu()).reshape(-1)
    true = np.asarray(torch.as_tensor(true_ids).cpu()).reshape(-1)
    if pred.shape != true.shape:
        raise DataError(f"pseudo_label_quality: {pred.size} pseudo labels for {true.size} identities")
    _, pred = np.unique(pred, return_inverse=True)
    _, true = np.unique(true, return_inverse=True)
    joint = np.bincount(pred * (true.max() + 1) + true) if pred.size else np.zeros(0, dtype=np.int64)

    def pairs(counts):
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    both, in_cluster, same_id = pairs(joint), pairs(np.bincount(pred)), pairs(np.bincount(true))
    precision = both / in_cluster if in_cluster else 1.0
    recall = both / same_id if same_id else 1.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    from sklearn.metrics import (
        normalized_mutual_info_score,  # imported here: sklearn costs seconds to load
    )

    nmi = float(normalized_mutual_info_score(true, pred)) if pred.size else 1.0
    return {"nmi": nmi, "pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f": f_score}
