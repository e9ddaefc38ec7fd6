"""Every benchmark's --quick mode still runs on the landed code, writes its JSON where it is told, and records the
commit it measured (so a published figure can be traced to the code that produced it)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env

BENCHMARKS = {
    "round_overhead.py": [],
    "buc_relabel.py": [],
    "modes.py": [],
    "fedcmd_table.py": [],
    "fedureid_table.py": [],
    "fedcmd_sweep.py": ["--work", "{tmp}/work"],
    "fedcmd_selection.py": ["--work", "{tmp}/work"],
    "scale.py": [],
    "partitions.py": [],
    "throughput.py": [],
    "reproduce.py": [],
}


def commits_in(document):
    if isinstance(document, dict):
        return [v for k, v in document.items() if k == "commit"] + [c for v in document.values() for c in commits_in(v)]
    if isinstance(document, list):
        return [c for v in document for c in commits_in(v)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_quick_mode_runs_and_records_the_commit(script, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    output = tmp_path / "out" / "result.json"
    extra = [arg.format(tmp=tmp_path) for arg in BENCHMARKS[script]]
    command = [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--output", str(output), *extra]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    written = sorted((tmp_path / "out").glob("*.json"))
    assert written, f"{script} wrote no JSON into {output.parent}"
    commits = [c for path in written for c in commits_in(json.loads(path.read_text()))]
    assert head in commits, f"{script}: no JSON of {[p.name for p in written]} records commit {head}"
    assert not (REPO / "benchmarks" / "results" / Path(output).name).exists()
