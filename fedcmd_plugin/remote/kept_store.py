"""A client service's own checkpoints: each hosted client's kept state after every round it trained, on disk.

In remote mode a client's own state (personal layers, memories) never leaves its client service, so the server's
checkpoint cannot hold it. The service writes it here instead, as `<remote.state_dir>/<run id>/<client>/after-
<rounds>.pt` (atomically, read back with `weights_only=True`), so that
* a client service restarted during a run continues from its client's latest state, and
* on first contact (a new run, a server resumed from its checkpoint with `remote server --resume`, a client back
  after missing a round) the client takes up exactly the snapshot the server names: the one after the last round
  whose training of it the server counted; later ones belong to rounds that run again.
The server tells each client which of its snapshots its checkpoint goes with; older ones are then removed, so a
client keeps about `server.checkpoint_every` snapshots at most.
"""
import io
import re
from pathlib import Path

import torch

from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.checkpoint import plain
from fedcmd_plugin.tracking import files

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SNAPSHOT = re.compile(r"^after-(\d{6,})\.pt$")


class KeptStore:
    def __init__(self, root):
        self.root = Path(root)

    def folder(self, run_id, cid):
        for name, value in (("run id", run_id), ("client id", cid)):
            if not SAFE_NAME.match(str(value)) or str(value) in (".", ".."):
                raise PluginError(f"{name} {value!r} cannot name a state folder (letters, digits, _ . - only)")
        return self.root / str(run_id) / str(cid)

    def snapshots(self, run_id, cid):
        """{rounds done: path} of the client's snapshots in run `run_id`."""
        folder = self.folder(run_id, cid)
        if not folder.is_dir():
            return {}
        found = {}
        for path in folder.iterdir():
            match = SNAPSHOT.match(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def save(self, run_id, cid, rounds_done, kept):
        buffer = io.BytesIO()
        torch.save(plain(kept, f"client {cid}'s kept state"), buffer)
        files.write_bytes(self.folder(run_id, cid) / f"after-{int(rounds_done):06d}.pt", buffer.getvalue(),
                          durable=True)

    def latest(self, run_id, cid, at_most=None):
        """(rounds done, kept state) of the client's latest snapshot (of at most `at_most` rounds), or None."""
        rounds = [r for r in self.snapshots(run_id, cid) if at_most is None or r <= at_most]
        if not rounds:
            return None
        path = self.snapshots(run_id, cid)[max(rounds)]
        try:
            kept = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: torch raises several kinds
            raise PluginError(f"client {cid}: {path} is not a readable state snapshot ({type(exc).__name__})") \
                from None
        if not isinstance(kept, dict):
            raise PluginError(f"client {cid}: {path} does not hold a state dict")
        return max(rounds), kept

    def forget_before(self, run_id, cid, oldest_needed):
        """A resume from the server's checkpoint needs the snapshot after round `oldest_needed` (or a later one
        for the live run), so older ones go."""
        for rounds, path in self.snapshots(run_id, cid).items():
            if rounds < oldest_needed:
                path.unlink(missing_ok=True)

    def forget_after(self, run_id, cid, rounds_done):
        """The run continues after `rounds_done` rounds: the snapshots of later rounds are of rounds that run again."""
        for rounds, path in self.snapshots(run_id, cid).items():
            if rounds > rounds_done:
                path.unlink(missing_ok=True)
