"""FedFomo and FedAP in remote mode: what they send and upload beyond the model (other clients' models, weights,
BatchNorm statistics) passes the server's checks, and the loopback run equals the standalone one."""
import pytest
from remote_helpers import Cluster, assert_complete, assert_matches_standalone

CASES = {
    "fedfomo": ["algorithm=fedfomo"],  # round 2 sends each client the other's model
    "fedap": ["algorithm=fedap", "model=lenet5_bn", "fedap.pretrain_rounds=1"],  # round 2 asks for statistics
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_loopback_run_matches_standalone(algorithm, tmp_path):
    cluster = Cluster(tmp_path / "remote", extra=CASES[algorithm])
    (tmp_path / "remote").mkdir()
    try:
        cluster.start()
        result = cluster.trigger()
        assert result.returncode == 0, f"trigger failed:\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
        (folder,) = cluster.run_folders()
        metrics = assert_complete(folder)
        assert all(row["clients"] == 2 and "rejected_uploads" not in row for row in metrics), cluster.logs()
    finally:
        cluster.processes.stop()

    assert_matches_standalone(folder, tmp_path, CASES[algorithm])
