"""Personalised evaluation: per-client results -> the sample-weighted mean and the per-client distribution."""
import numpy as np


def summarise_classification(results, split="test"):
    """results: dicts with <split>_correct/_total/_loss per client. Accuracies in percent."""
    rows = [r for r in results if r.get(f"{split}_total")]
    if not rows:
        return {}
    correct = np.array([r[f"{split}_correct"] for r in rows], dtype=float)
    total = np.array([r[f"{split}_total"] for r in rows], dtype=float)
    per_client = 100.0 * correct / total
    summary = {
        "accuracy": float(100.0 * correct.sum() / total.sum()),
        "accuracy_mean": float(per_client.mean()),
        "accuracy_std": float(per_client.std()),
        "accuracy_min": float(per_client.min()),
        "accuracy_p10": float(np.percentile(per_client, 10)),
        "accuracy_median": float(np.median(per_client)),
        "accuracy_max": float(per_client.max()),
        "loss": float(sum(r[f"{split}_loss"] for r in rows) / total.sum()),
        "evaluated_clients": len(rows),
    }
    if split == "test" and any("train_total" in r for r in results):
        train = summarise_classification(results, "train")
        summary["train_accuracy"] = train.get("accuracy")
    for r in rows:
        r[f"{split}_accuracy"] = float(100.0 * r[f"{split}_correct"] / r[f"{split}_total"])
    return summary
