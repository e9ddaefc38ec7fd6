"""Seeds that depend on (run seed, round, client, purpose) only: never on which rank or process runs a client."""
import hashlib

import torch


def derived_seed(*parts):
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def client_generator(meta, cid, purpose):
    """A generator for one client's shuffling in one round; also seeds torch's global RNG (dropout, init)."""
    seed = derived_seed(meta.get("seed", 0), meta.get("round", 0), cid, purpose)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
