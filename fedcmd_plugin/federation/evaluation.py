"""Evaluation: one model on one client's splits, and per-client results -> the headline over clients and the
per-client distribution."""
import numpy as np
import torch.nn.functional as F


def measure(model, data, cid, splits, batch_size, device):
    """Correct predictions, mean cross-entropy per sample and sample count of `model` on client `cid`'s splits.

    data: {"test": ..., "train": ...} federated data sets; call under torch.no_grad() with the model in eval mode.
    """
    result = {}
    for split in splits:
        correct, loss, total = 0, 0.0, 0
        for x, y in data[split].batches(cid, batch_size, None, device):
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        result[f"{split}_correct"], result[f"{split}_total"] = correct, total
        result[f"{split}_loss"] = loss / total if total else 0.0
    return result


def summarise_classification(results, split="test", method="weighted"):
    """results: dicts with <split>_correct/_total/_loss per client. Accuracies in percent.

    `accuracy` and `loss` are the headline: pooled over every sample (method "weighted", a client counts by its
    test samples) or the plain mean over clients ("average", EasyFL's test_method).
    """
    rows = [r for r in results if r.get(f"{split}_total")]
    if not rows:
        return {}
    correct = np.array([r[f"{split}_correct"] for r in rows], dtype=float)
    total = np.array([r[f"{split}_total"] for r in rows], dtype=float)
    losses = np.array([r[f"{split}_loss"] for r in rows], dtype=float)
    per_client = 100.0 * correct / total
    weights = total if method == "weighted" else np.ones_like(total)
    summary = {
        "accuracy": float(np.average(per_client, weights=weights)),
        "accuracy_mean": float(per_client.mean()),
        "accuracy_std": float(per_client.std()),
        "accuracy_min": float(per_client.min()),
        "accuracy_p10": float(np.percentile(per_client, 10)),
        "accuracy_median": float(np.median(per_client)),
        "accuracy_max": float(per_client.max()),
        "loss": float(np.average(losses, weights=weights)),
        "evaluated_clients": len(rows),
    }
    if split == "test" and any("train_total" in r for r in results):
        train = summarise_classification(results, "train", method)
        summary["train_accuracy"] = train.get("accuracy")
    for r in rows:
        r[f"{split}_accuracy"] = float(100.0 * r[f"{split}_correct"] / r[f"{split}_total"])
    return summary


def sampled_accuracy_interval(correct, total, population, z=1.96):
    """(low, high) in percent: the 95% interval of the population's pooled accuracy sum(correct) / sum(total)
    estimated from a simple random sample of its clients (ratio estimator, finite-population corrected).

    A client is one cluster of test samples, so the spread comes from how clients differ, not from their samples;
    a census (the sample is the population) has no sampling error.
    """
    correct, total = np.asarray(correct, dtype=float), np.asarray(total, dtype=float)
    k = len(total)
    if k == 0 or population < k:
        raise ValueError(f"a sample of {k} clients from a population of {population}")
    ratio = correct.sum() / total.sum()
    if k == 1 or k == population:
        spread = 0.0 if k == population else float("inf")
    else:
        residual = correct - ratio * total
        variance = (1 - k / population) * (residual ** 2).sum() / (k - 1) / (k * total.mean() ** 2)
        spread = z * float(np.sqrt(variance))
    return 100.0 * (ratio - spread), 100.0 * (ratio + spread)
