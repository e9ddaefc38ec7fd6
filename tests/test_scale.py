"""What must not grow with the number of clients: state held by clients after their work is done."""
import easyfl

import fedcmd_plugin
from fedcmd_plugin.experiment import last_run

from conftest import CONFIGS


def test_clients_hold_nothing_of_their_dispatch_after_training_or_evaluation(tmp_run_dir):
    """A client object lives for the whole run: kept dispatches would be one model copy per evaluated client."""
    conf = fedcmd_plugin.load_config(CONFIGS / "pfedsim_digits.yaml", [
        "server.rounds=2", "personalization.warmup_rounds=1", "client.local_epoch=1", "parallel.workers=1",
        "output.progress=false", "output.tensorboard=false", "output.save_fig=false", *tmp_run_dir])
    fedcmd_plugin.register("pfedsim")
    easyfl.init(conf)
    easyfl.run()
    assert last_run()["summary"]["final"]["evaluated_clients"] == conf.data.num_of_clients
    clients = easyfl.coordinator._global_coord.clients
    assert all(c.dispatch is None and c.signature_start is None for c in clients)
    assert sum(1 for c in clients if c.kept) <= conf.server.clients_per_round  # kept heads: round 2 only
