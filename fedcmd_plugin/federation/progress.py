"""Progress bars over rounds and local epochs: on a terminal by default, silent in CI and pipes."""
import sys
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class Progress:
    """Whether this process draws bars; the server makes one per run and its fleet hands it to the clients."""
    enabled: bool = False

    @classmethod
    def of(cls, mode, primary=True):
        """mode (output.progress): "auto" (only when stderr is a terminal), True or False; only the primary
        process draws."""
        return cls(primary and (sys.stderr.isatty() if mode == "auto" else bool(mode)))

    def rounds(self, total, initial=0):
        return tqdm(total=total, initial=initial, desc="rounds", unit="round", disable=not self.enabled,
                    dynamic_ncols=True)

    def epochs(self, epochs, desc):
        if not self.enabled:
            return range(epochs)
        return tqdm(range(epochs), desc=desc, unit="epoch", leave=False, position=1, dynamic_ncols=True)


SILENT = Progress()
