"""Model builders shared by the classification algorithms."""
from fedcmd_plugin.errors import ConfigError
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
