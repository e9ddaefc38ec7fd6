"""What the baselines share: the classification model builder and the flat form of per-client server state."""
from fedcmd_plugin.errors import ConfigError, PluginError
from fedcmd_plugin.models import build_model

DEFAULT_CLASSIFIER = "lenet5"
ALIASES = {"auto": DEFAULT_CLASSIFIER, "lenet": "lenet5"}  # "lenet" is EasyFL's default model name


def classification_model(conf, info):
    """The configured classifier for the data (`model: auto` = LeNet-5)."""
    if info.task != "classification":
        raise ConfigError(f"algorithm {conf.algorithm!r} needs a classification data set; "
                          f"data.dataset {conf.data.dataset!r} is a {info.task} data set")
    name = ALIASES.get(conf.model, conf.model)
    return build_model(name, info.in_channels, info.num_classes, info.image_size)


def flatten_states(states):
    """{cid: {key: tensor}} as one {"cid/key": tensor} dict: the shape `algorithm_state` hands to checkpoints."""
    return {f"{cid}/{key}": value for cid, state in states.items() for key, value in state.items()}


def nested_states(flat, clients):
    """`flatten_states` undone (tensors cloned); PluginError for a client that is not one of `clients`."""
    states = {}
    for name, value in flat.items():
        cid, _, key = name.partition("/")
        if cid not in clients:
            raise PluginError(f"the saved algorithm state names client {cid!r}, which is not in this run")
        states.setdefault(cid, {})[key] = value.clone()
    return states
