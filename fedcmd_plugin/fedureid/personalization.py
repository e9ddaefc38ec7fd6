"""FedUReID's edge-side joint optimisation as pure rules: personalized clustering and personalized epoch.

Personalized clustering: each edge merges toward its own target cluster count at its own pace, instead of
every edge merging one global percentage of its images per step:

    target = target_clusters, or round(num_images / images_per_identity) when the config gives none
    merges = ceil((current_clusters - target) / remaining_steps), within [0, current_clusters - 1]

so an edge spreads the merges it still needs evenly over the merge steps it has left, and a big edge (more
images, more clusters to remove) merges more per step than a small one.

Personalized epoch: local epochs follow the edge's data volume and its training feedback:

    planned = clamp(round(base_epochs * reference_images / num_images), min_epochs, max_epochs)

i.e. every edge processes about ``base_epochs * reference_images`` images per round (reference_images is e.g.
the median edge size), so the largest edges, which make a synchronous round wait, do fewer passes over their
data; and training stops before `planned` once the pseudo-label training precision has saturated: it reached
`saturation`, or it rose by less than `threshold` over the last `patience` epochs.
"""
import math

from fedcmd_plugin.errors import ConfigError

MARKET_IMAGES_PER_IDENTITY = 17.0  # Market-1501 train: 12,936 images of 751 identities


def target_cluster_count(num_images, images_per_identity=MARKET_IMAGES_PER_IDENTITY):
    """Estimated number of identities on an edge when the config does not give its target cluster count."""
    if images_per_identity <= 0:
        raise ConfigError(f"images_per_identity: expected a positive number, got {images_per_identity!r}")
    return max(1, round(num_images / images_per_identity))


def merge_amount(num_images, current_clusters, target_clusters=None, remaining_steps=1,
                 images_per_identity=MARKET_IMAGES_PER_IDENTITY):
    """Merges for this edge's next BUC step (see the module docstring for the formula)."""
    if num_images < 1 or not 1 <= current_clusters <= num_images:
        raise ConfigError(f"merge_amount: expected 1 <= current_clusters <= num_images, got {current_clusters} "
                          f"clusters for {num_images} images")
    if remaining_steps < 1:
        raise ConfigError(f"merge_amount remaining_steps: expected an integer >= 1, got {remaining_steps!r}")
    if target_clusters is None:
        target_clusters = target_cluster_count(num_images, images_per_identity)
    if target_clusters < 1:
        raise ConfigError(f"target_clusters: expected an integer >= 1, got {target_clusters!r}")
    needed = math.ceil((current_clusters - target_clusters) / remaining_steps)
    return int(min(max(needed, 0), current_clusters - 1))


def adaptive_epochs(base_epochs, num_images, reference_images, precision_history=(), patience=2, threshold=0.01,
                    min_epochs=1, max_epochs=None, saturation=1.0):
    """Epochs this edge runs in the current round, given the precisions of the epochs it has run so far.

    Call before each epoch with the round's precision history (one value per finished epoch, in [0, 1]); train
    another epoch while ``len(history) < adaptive_epochs(...)``. Returns `len(history)` once precision has
    saturated (and at least `min_epochs` have run), otherwise the planned count (module docstring).
    """
    if base_epochs < 1 or min_epochs < 1 or (max_epochs is not None and max_epochs < min_epochs):
        raise ConfigError(f"adaptive_epochs: expected base_epochs >= 1 and 1 <= min_epochs <= max_epochs, got "
                          f"{base_epochs}, {min_epochs}, {max_epochs}")
    if num_images < 1 or reference_images <= 0:
        raise ConfigError(f"adaptive_epochs: expected num_images >= 1 and reference_images > 0, got {num_images}, "
                          f"{reference_images}")
    if patience < 1:
        raise ConfigError(f"adaptive_epochs patience: expected an integer >= 1, got {patience!r}")
    planned = max(min_epochs, round(base_epochs * reference_images / num_images))
    if max_epochs is not None:
        planned = min(planned, max_epochs)
    history = list(precision_history)
    done = len(history)
    if done >= min_epochs and history and history[-1] >= saturation:
        return done  # the edge already fits its pseudo labels: more passes only cost images
    if done >= max(min_epochs, patience + 1) and history[-1] - history[-1 - patience] < threshold:
        return done
    return planned
