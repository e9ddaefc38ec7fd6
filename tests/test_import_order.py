"""`import easyfl` and `import fedcmd_plugin` work in either order in a fresh interpreter of the installed package.

easyfl 0.1.2's generated protobuf modules need protobuf's pure-python backend; the installed package ships
`fedcmd_plugin_protobuf.pth`, which selects it at interpreter start. The children here run WITHOUT
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION (and without PYTHONPATH), so that start-up hook is what is tested.
"""
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

import fedcmd_plugin

PTH = "fedcmd_plugin_protobuf.pth"
PACKAGE_DIR = Path(fedcmd_plugin.__file__).resolve().parent


def installed_site_dir():
    """The site-packages folder holding this fedcmd_plugin and its .pth file, or None (dev tree, editable)."""
    site_dirs = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    parent = PACKAGE_DIR.parent
    return parent if parent in site_dirs and (parent / PTH).is_file() else None


pytestmark = pytest.mark.skipif(
    installed_site_dir() is None,
    reason=f"fedcmd_plugin is imported from {PACKAGE_DIR}, not from a non-editable install: the {PTH} start-up "
           "hook is only in effect after `pip install .` (make install)")

CHILD = """
import json, os, sys
{imports}
import easyfl.server, easyfl.client  # modules below use the generated protobuf code
import easyfl.pb.client_service_pb2, easyfl.pb.server_service_pb2
fedcmd_plugin.register("fedavg")
print(json.dumps({{"file": fedcmd_plugin.__file__,
                   "protobuf": os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"),
                   "init": callable(easyfl.init)}}))
"""


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "PYTHONPATH")}
    env.update(OMP_NUM_THREADS="1")
    return env


@pytest.mark.parametrize("imports", ["import easyfl\nimport fedcmd_plugin", "import fedcmd_plugin\nimport easyfl"],
                         ids=["easyfl-first", "plugin-first"])
def test_fresh_interpreter_imports_in_any_order(imports, tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD.format(imports=imports)], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().parent == PACKAGE_DIR  # the installed copy, not a checkout
    assert report["protobuf"] == "python"  # set by the .pth at start-up, not by this test's environment
    assert report["init"] is True


def test_pth_respects_a_choice_already_made(tmp_path):
    env = dict(clean_env(), PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="upb")
    show = "import os; print(os.environ['PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION'])"
    result = subprocess.run([sys.executable, "-c", show], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "upb"
