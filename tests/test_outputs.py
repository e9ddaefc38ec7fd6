"""What a run leaves behind: files only in its run folder and data.root, and metrics that mean what they say."""
from conftest import CONFIGS

FAST = ["server.rounds=1", "data.num_of_clients=6", "server.clients_per_round=3", "client.local_epoch=1",
        "num_threads=1"]


def test_a_run_writes_nothing_outside_its_run_folder_and_data_root(run_cli, tmp_run_dir):
    before = set(tmp_run_dir.path.iterdir())
    result = run_cli("run", CONFIGS / "fedavg_digits.yaml", *FAST, *tmp_run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(tmp_run_dir.path.iterdir()) - before == {tmp_run_dir.output_root, tmp_run_dir.data_root}
