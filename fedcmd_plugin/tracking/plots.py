"""PNG plots of a run (matplotlib, headless)."""
from contextlib import contextmanager


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@contextmanager
def figure(path, title, xlabel=None, ylabel=None, size=(6, 4)):
    """Axes to draw on; on exit the figure is titled, labelled and saved to `path` (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield fig, ax
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        _save(fig, path)
    finally:
        plt.close(fig)


@contextmanager
def panels(path, title, count, size=(6, 4.5)):
    """`count` side-by-side axes (each `size`); on exit the figure gets `title` and is saved to `path`."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, count, figsize=(size[0] * count, size[1]), squeeze=False)
    try:
        yield list(axes[0])
        fig.suptitle(title)
        _save(fig, path)
    finally:
        plt.close(fig)


def accuracy_per_round(rows, path, title, method):
    """The headline accuracy (averaged by `method`, EasyFL's test_method) per evaluated round, with the mean
    over clients and the per-client min-max band."""
    rows = [r for r in rows if "accuracy" in r]
    if not rows:
        return None
    rounds = [r["round"] for r in rows]
    with figure(path, title, "round", "accuracy (%)") as (_, ax):
        ax.plot(rounds, [r["accuracy"] for r in rows], marker="o", label=f"accuracy ({method})")
        ax.plot(rounds, [r["accuracy_mean"] for r in rows], linestyle="--", label="mean over clients")
        ax.fill_between(rounds, [r["accuracy_min"] for r in rows], [r["accuracy_max"] for r in rows], alpha=0.15,
                        label="client min-max")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return path


def client_distribution(accuracies, path, title):
    """Histogram of the final per-client accuracies."""
    if not accuracies:
        return None
    with figure(path, title, "client accuracy on its own test split (%)", "clients") as (_, ax):
        ax.hist(accuracies, bins=min(20, max(5, len(accuracies) // 2)), range=(0, 100), edgecolor="black")
    return path


def matrix(values, labels, path, title):
    """A heat map (e.g. FedCMD's client similarity matrix)."""
    with figure(path, title, size=(6, 5)) as (fig, ax):
        fig.colorbar(ax.imshow(values, cmap="viridis", vmin=0), ax=ax)
        if len(labels) <= 30:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
    return path


def bars(names, values, path, title, ylabel):
    """A bar chart (e.g. FedCMD's layer votes)."""
    with figure(path, title, ylabel=ylabel) as (_, ax):
        ax.bar(names, values)
    return path


def curves(series, path, title, xlabel, ylabel):
    """One line per name: series = {name: (xs, ys)} (e.g. CMC curves per edge, mAP per round)."""
    with figure(path, title, xlabel, ylabel) as (_, ax):
        for name, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="." if len(xs) < 30 else None, label=str(name))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path
