"""FedFomo, FedAP, Ditto and FedDyn in remote mode: what they send and upload beyond the model (other clients'
models, weights, BatchNorm statistics) passes the server's checks, the state their clients keep beside the model
(Ditto's personal model, FedDyn's linear term) stays right in the client services, and the loopback run equals the
standalone one."""
import pytest
from remote_helpers import assert_matches_standalone, one_remote_run

CASES = {
    "fedfomo": ["algorithm=fedfomo"],  # round 2 sends each client the other's model
    "fedap": ["algorithm=fedap", "model=lenet5_bn", "fedap.pretrain_rounds=1"],  # round 2 asks for statistics
    "ditto": ["algorithm=ditto"],  # each client tests its personal model, kept in its service
    "feddyn": ["algorithm=feddyn"],  # the server's h and each client's linear term
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_loopback_run_matches_standalone(algorithm, tmp_path):
    folder, _ = one_remote_run(tmp_path, CASES[algorithm])
    assert_matches_standalone(folder, tmp_path, CASES[algorithm])
