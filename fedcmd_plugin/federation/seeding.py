"""Seeds that depend on (run seed, round, client, purpose) only: never on which rank or process runs a client."""
import hashlib

import torch


def derived_seed(*parts):
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def client_generator(settings, cid, purpose):
    """A generator for one client's shuffling in one round (`settings`: the round's RoundSettings, or anything with
    its `seed` and `round`); also seeds torch's global RNG (dropout, init)."""
    seed = derived_seed(settings.seed, settings.round, cid, purpose)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
