"""How the server reaches its clients. `LocalFleet`: client objects in this process (standalone and
distributed mode). Remote mode provides a fleet with the same three methods over gRPC."""


class LocalFleet:
    def __init__(self, clients, workspace, initial_state):
        for client in clients:
            client.attach(workspace, initial_state)
        self.clients = {client.cid: client for client in clients}

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
