"""How the server reaches its clients: any `Fleet`. Each mode's entry point builds one and hands it to the server
before the run starts, and the round never knows which it has: the plugin's EasyFL coordinator (standalone and
distributed: `LocalFleet`, client objects in this process, or `workers.ProcessFleet` over worker processes, see
`workers.local_fleet`) and the remote server service (gRPC client services). A fleet with a message size limit
also has `check_room(state, models)`, which refuses a run whose dispatches of `models` such states it cannot
carry."""
from typing import Protocol

from fedcmd_plugin.federation.progress import SILENT


class Fleet(Protocol):
    report_type: type | None  # the Report class of the algorithm's part of the clients' uploads (`report_type`)

    def client_ids(self) -> list:
        """Every client of the run, sorted."""

    def train(self, dispatches: dict) -> list:
        """{cid: Dispatch} -> [Upload] of the clients that answered."""

    def evaluate(self, dispatches: dict, splits: tuple) -> list:
        """{cid: Dispatch} -> [{"cid": ..., <metrics>}] of the clients that answered."""

    def kept(self, cid: str) -> dict:
        """The client's own state where the server can see it (for checkpoints); {} where it cannot."""

    def set_kept(self, cid: str, kept: dict) -> None:
        """Copy kept state trained elsewhere (distributed replicas)."""

    def checkpointed(self, rounds_done: int) -> dict:
        """The server writes its checkpoint after `rounds_done` rounds: what the fleet needs in it to resume."""

    def resume(self, rounds_done: int, saved: dict) -> None:
        """The run continues after `rounds_done` rounds from a checkpoint where `checkpointed` gave `saved`."""


class LocalFleet:
    def __init__(self, clients, workspace, initial_state, progress=SILENT):
        for client in clients:
            client.attach(workspace, initial_state, progress)
        self.clients = {client.cid: client for client in clients}
        self.report_type = type(clients[0]).report_type if clients else None

    def client_ids(self):
        return sorted(self.clients)

    def train(self, dispatches):
        """{cid: Dispatch} -> [Upload] (one per client that answered)."""
        return [self.clients[cid].run_round(dispatch) for cid, dispatch in dispatches.items()]

    def evaluate(self, dispatches, splits):
        """{cid: Dispatch} -> [{"cid": ..., <metrics>}]."""
        return [{"cid": cid, **self.clients[cid].evaluate(dispatch, splits)} for cid, dispatch in dispatches.items()]

    def kept(self, cid):
        """The client's own state where this process can see it (for checkpoints)."""
        return self.clients[cid].kept

    def set_kept(self, cid, kept):
        """Distributed: every rank hosts every client; state trained on another rank is copied here."""
        self.clients[cid].kept = kept

    def checkpointed(self, rounds_done):
        """Client objects: their kept state goes into the checkpoint through `kept`."""
        return {"mode": "local"}

    def resume(self, rounds_done, saved):
        """The server has put the checkpoint's kept state back with `set_kept`."""
