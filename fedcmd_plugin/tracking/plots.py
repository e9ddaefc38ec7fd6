"""PNG plots of a run (matplotlib, headless)."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_per_round(rows, path, title):
    """Weighted personalised accuracy per evaluated round, with the per-client min-max band."""
    rows = [r for r in rows if "accuracy" in r]
    if not rows:
        return None
    plt = pyplot()
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [r["accuracy"] for r in rows], marker="o", label="personalised (sample-weighted)")
    ax.plot(rounds, [r["accuracy_mean"] for r in rows], linestyle="--", label="mean over clients")
    ax.fill_between(rounds, [r["accuracy_min"] for r in rows], [r["accuracy_max"] for r in rows], alpha=0.15,
                    label="client min-max")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def client_distribution(accuracies, path, title):
    """Histogram of the final per-client accuracies."""
    if not accuracies:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(accuracies, bins=min(20, max(5, len(accuracies) // 2)), range=(0, 100), edgecolor="black")
    ax.set_xlabel("client accuracy on its own test split (%)")
    ax.set_ylabel("clients")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def matrix(values, labels, path, title):
    """A heat map (e.g. FedCMD's client similarity matrix)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(values, cmap="viridis", vmin=0)
    fig.colorbar(image, ax=ax)
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(names, values, path, title, ylabel):
    """A bar chart (e.g. FedCMD's layer votes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(series, path, title, xlabel, ylabel):
    """One line per name: series = {name: (xs, ys)} (e.g. CMC curves per edge, mAP per round)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="." if len(xs) < 30 else None, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
