"""FedFomo and FedAP in remote mode: what they send and upload beyond the model (other clients' models, weights,
BatchNorm statistics) passes the server's checks, and the loopback run equals the standalone one."""
import subprocess
import sys

import pytest
from remote_helpers import (
    CONFIG,
    RUN,
    RUN_TIMEOUT,
    Cluster,
    assert_complete,
    client_rows,
)

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

    standalone = subprocess.run([sys.executable, "-m", "fedcmd_plugin", "run", CONFIG, *RUN, *CASES[algorithm],
                                 f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
                                stdin=subprocess.DEVNULL)
    assert standalone.returncode == 0, standalone.stderr
    (local,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    remote_rows, local_rows = client_rows(folder), client_rows(local)
    assert len(remote_rows) == len(local_rows) == 4
    for mine, theirs in zip(remote_rows, local_rows):
        assert (mine["round"], mine["cid"], mine["test_correct"]) == (theirs["round"], theirs["cid"],
                                                                       theirs["test_correct"])
        assert float(mine["test_loss"]) == pytest.approx(float(theirs["test_loss"]), rel=1e-5)
