"""The resume checkpoint of a run: `checkpoint.pt` in its run folder, the latest one only, replaced atomically.

It holds what a run needs to continue as if it had never stopped: the rounds done, the global model, every
client's own state where the server sees it (`Fleet.kept`; remote client services keep their own, and the
checkpoint names the run and its clients instead: `Fleet.checkpointed`), the server's state
(`FederatedServer.algorithm_state`: per-client aggregates, similarity memories, FedCMD's tally and decision, and
FedUReID's edge models), the last evaluation, the recorder's metrics, and the positions of the process's global
random generators. Every draw the plugin makes is seeded by (seed, round, client, purpose) (`seeding`), so those
positions matter only to code that draws from the global generators between rounds; they are saved so that such
code resumes exactly too.

The file is written with `torch.save` and read with `weights_only=True`: tensors, containers and plain values,
nothing else is unpickled. It names its format, the plugin's version and the config it belongs to; a resume with
another format, version or config is refused with what differs.
"""
import io
import json
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fedcmd_plugin.config import RUNTIME_KEYS, leaves
from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.tracking import files

FORMAT = 2
FILE = "checkpoint.pt"
# Keys (and sections) a resume may change: how it is started, where and what it writes, how the work is spread
# over processes and how services reach each other. None of them changes a result.
CHANGEABLE = ("resume", "output", "tracking", "parallel", "distributed", "remote", "data.root", "data.cache",
              "server.checkpoint_every")
FREE_KEYS = (*CHANGEABLE, *RUNTIME_KEYS)  # runtime keys: set by EasyFL and the plugin for each process
SHOWN_DIFFERENCES = 5


class CheckpointError(PluginError):
    """A run folder that cannot be resumed, or state that cannot be checkpointed."""


def version():
    from fedcmd_plugin import __version__

    return __version__


# ----- the config a checkpoint belongs to ----------------------------------------------------------------------------
def comparable(conf):
    """The resolved config as {dotted key: value}, without the keys a resume may change (FREE_KEYS)."""
    flat = {}
    for key in conf:
        for dotted, value in leaves(conf[key], str(key)):
            if not any(dotted == free or dotted.startswith(free + ".") for free in FREE_KEYS):
                flat[dotted] = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    return flat


def differences(saved, current):
    """'key saved -> current' for every key whose value differs (at most SHOWN_DIFFERENCES, then a count)."""
    keys = sorted(set(saved) | set(current))
    changed = [f"{k} {json.dumps(saved.get(k))} -> {json.dumps(current.get(k))}" for k in keys
               if saved.get(k, ()) != current.get(k, ())]
    shown = ", ".join(changed[:SHOWN_DIFFERENCES])
    return shown + (f" and {len(changed) - SHOWN_DIFFERENCES} more" if len(changed) > SHOWN_DIFFERENCES else "")


# ----- plain values only -------------------------------------------------------------------------------------------
def plain(value, where):
    """`value` as what `torch.load(weights_only=True)` reads back: dicts with string keys, lists, CPU tensors that
    own their storage, str/int/float/bool/None; NumPy scalars become Python numbers. Anything else is a
    CheckpointError naming where it sits, raised when the checkpoint is written rather than when it is read."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        return tensor.clone() if tensor.untyped_storage().nbytes() != tensor.nbytes else tensor
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise CheckpointError(f"{where} has keys that are not strings: a checkpoint holds JSON-like values")
        return {key: plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise CheckpointError(f"{where} is a {type(value).__name__}: a checkpoint holds tensors, dicts, lists and plain "
                          f"values (convert it, e.g. torch.as_tensor)")


# ----- global random generators ----------------------------------------------------------------------------------
def generator_states():
    """The positions of this process's global generators (torch CPU, NumPy's legacy one, Python's `random`)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": python_version, "state": torch.tensor(python_state, dtype=torch.int64),
                       "gauss": python_gauss}}


def restore_generators(states):
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["gauss"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))


# ----- writing and reading -----------------------------------------------------------------------------------------
def write(folder, conf, rounds_done, parts):
    """Replace `folder`/checkpoint.pt by the state after `rounds_done` rounds: `parts` ({name: value}) plus the
    format, version, config and generator positions. The file is complete on disk before it replaces the previous
    one, so a crash at any moment leaves the previous checkpoint or this one, never a mixture."""
    payload = {"format": FORMAT, "version": version(), "algorithm": conf.algorithm, "rounds": int(conf.server.rounds),
               "round": int(rounds_done), "config": comparable(conf), "generators": generator_states(),
               **{name: plain(value, name) for name, value in parts.items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    for stale in folder.glob(files.temporary_prefix(FILE) + "*"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    files.write_bytes(folder / FILE, buffer.getvalue(), durable=True)


def read(folder, conf, mmap=False):
    """The checkpoint in run folder `folder` that `conf` continues; CheckpointError (one line naming the folder)
    for a folder that is not a run folder, is complete, has no checkpoint, or has one of another format, version
    or config. `mmap`: tensors are mapped, not read (a check before a run starts costs no more than the header)."""
    folder = Path(folder)
    where = f"cannot resume {folder}"
    status_file = folder / "status.json"
    if not status_file.is_file():
        raise CheckpointError(f"{where}: not a run folder (no status.json)")
    try:
        status = json.loads(status_file.read_text())
    except ValueError:
        status = {}
    if status.get("state") == "complete":
        raise CheckpointError(f"{where}: the run is complete (every round ran); start a new run instead")
    path = folder / FILE
    if not path.is_file():
        raise CheckpointError(f"{where}: it has no {FILE} (one is written every server.checkpoint_every rounds and "
                              f"when a run is stopped by SIGTERM or SIGINT)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several kinds for a damaged or foreign file
        raise CheckpointError(f"{where}: {path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else None
        raise CheckpointError(f"{where}: {FILE} has checkpoint format {found!r}; this version reads format {FORMAT}")
    mode, expected = (saved.get("fleet") or {}).get("mode"), "remote" if conf.get("is_remote") else "local"
    if mode != expected:
        how = "fedcmd-plugin remote server CONFIG --resume" if mode == "remote" else "fedcmd-plugin run CONFIG --resume"
        raise CheckpointError(f"{where}: its checkpoint is of a {mode} run, so its clients' own state is "
                              f"{'in the client services' if mode == 'remote' else 'in the checkpoint'}: resume it "
                              f"with `{how} {folder}`")
    if saved.get("version") != version():
        raise CheckpointError(f"{where}: {FILE} was written by fedcmd_plugin {saved.get('version')}, this is "
                              f"{version()}: resume with the version that wrote it")
    current = comparable(conf)
    if saved["config"] != current:
        raise CheckpointError(f"{where}: its checkpoint belongs to another config: "
                              f"{differences(saved['config'], current)} (only {', '.join(CHANGEABLE)} may differ)")
    return saved
