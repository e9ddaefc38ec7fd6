"""The three ways to install the package each give an environment where `import easyfl` works before or after
`import fedcmd_plugin`: easyfl 0.1.2's protobuf modules need the start-up hook (`fedcmd_plugin_protobuf.pth`),
which a regular install, a built wheel and an editable install must all put into site-packages.

Each case makes a fresh virtual environment that sees this environment's dependencies (not its copy of the
plugin) and installs a copy of the repository into it with pip, as a user would (pip fetches the build backend).
"""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 600
OURS = ("fedcmd_plugin", "fedcmd-plugin", "__editable__", "pip", "setuptools", "_distutils_hack", "distutils-precedence",
        "wheel")
SOURCE_SKIPS = (".git", ".venv", "runs", "data", "build", "dist", "__pycache__", "*.egg-info", ".pytest_cache")


def environment(tmp_path):
    """A virtual environment whose only extra path entry is a folder of links to this environment's packages,
    without the plugin itself (nor pip and setuptools, which the new environment has of its own)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT)
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OURS):
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "test_dependencies.pth").write_text(f"{deps}\n")
    return python


def pip(python, *args, cwd=None):
    result = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def imports(python, first, then, cwd):
    """Where `fedcmd_plugin` was imported from, after importing `first` then `then` in a fresh interpreter."""
    result = subprocess.run([python, "-c", f"import {first}, {then}, fedcmd_plugin; print(fedcmd_plugin.__file__)"],
                            capture_output=True, text=True, timeout=120, cwd=cwd,
                            env={"PATH": "/usr/bin:/bin"})  # no PROTOCOL_BUFFERS_* from the test's environment
    assert result.returncode == 0, f"import {first}, {then} failed:\n{result.stderr[-3000:]}"
    return Path(result.stdout.strip())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["regular", "editable", "wheel"])
def test_every_install_imports_easyfl_in_either_order(how, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SOURCE_SKIPS))
    python = environment(tmp_path)
    if how == "regular":
        pip(python, str(source))
    elif how == "editable":
        pip(python, "-e", str(source))
    else:
        built = subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "wheels"),
                                str(source)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                               stdin=subprocess.DEVNULL)
        assert built.returncode == 0, built.stderr[-3000:]
        (wheel,) = (tmp_path / "wheels").glob("fedcmd_plugin-*.whl")
        pip(python, str(wheel))
    elsewhere = tmp_path / "elsewhere"  # not the source folder: the import must come from the installation
    elsewhere.mkdir()
    for first, then in (("easyfl", "fedcmd_plugin"), ("fedcmd_plugin", "easyfl")):
        found = imports(python, first, then, elsewhere)
        if how == "editable":
            assert found.is_relative_to(source), found  # the source folder itself, so edits take effect
        else:
            assert found.is_relative_to(tmp_path / "venv"), found
