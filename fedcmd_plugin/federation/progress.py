"""Progress bars over rounds and local epochs: on a terminal by default, silent in CI and pipes."""
import sys

from tqdm import tqdm

_enabled = False


def configure(mode, primary=True):
    """mode: "auto" (only when stderr is a terminal), True or False; only the primary process draws."""
    global _enabled
    _enabled = primary and (sys.stderr.isatty() if mode == "auto" else bool(mode))


def round_bar(total, initial=0):
    return tqdm(total=total, initial=initial, desc="rounds", unit="round", disable=not _enabled, dynamic_ncols=True)


def epoch_bar(epochs, desc):
    if not _enabled:
        return range(epochs)
    return tqdm(range(epochs), desc=desc, unit="epoch", leave=False, position=1, dynamic_ncols=True)
