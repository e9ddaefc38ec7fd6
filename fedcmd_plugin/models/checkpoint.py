"""Starting a model from a user's parameter file (model_init.params_file), with errors that name the file."""
from pathlib import Path

import torch

from fedcmd_plugin.errors import ConfigError


def load_initial_params(model, params_file):
    """Load a saved state_dict into `model`; every key must match so a wrong file is never half-applied."""
    if not params_file:
        return model
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"model_init.params_file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ConfigError(f"model_init.params_file {path} is not a readable state_dict: {exc}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ConfigError(f"model_init.params_file {path} must hold a state_dict, got {type(state).__name__}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(f"model_init.params_file {path} does not fit the model: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(state)
    return model
