"""Model registry: config names -> builders `(in_channels, num_classes, image_size) -> nn.Module`, and the one
place a run's config and data become its model (`classification_model`; ReID models: `models.reid.reid_model`).

The registry is open so other modules add their models with `register_model_builder`.
"""
from functools import partial

from torch import nn

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.models.blocks import BlockNet
from fedcmd_plugin.models.cnn import SmallCNN
from fedcmd_plugin.models.lenet import LeNet5
from fedcmd_plugin.models.mlp import MLP

MODELS = {
    "lenet5": LeNet5,
    "lenet5_bn": partial(LeNet5, batch_norm=True),
    "cnn": SmallCNN,
    "mlp": MLP,
}


def register_model_builder(name, fn):
    """Make `fn(in_channels, num_classes, image_size)` buildable by name; a name cannot be taken twice."""
    if name in MODELS and MODELS[name] is not fn:
        raise ValueError(f"model name {name!r} is already registered")
    MODELS[name] = fn


def has_batch_norm(model):
    """Whether `model` normalises by batch statistics (such layers need two or more samples per batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


ALIASES = {"lenet": "lenet5"}  # EasyFL's default model name


def auto_model(info):
    """`model: auto`: LeNet-5 for images, the MLP for feature vectors (data sets of vectors have image_size 1)."""
    return "mlp" if info.image_size == 1 else "lenet5"


def classification_model(conf, info):
    """The classifier config key `model` names, shaped for the data (`info`: its DataInfo)."""
    if info.task != "classification":
        raise ConfigError(f"algorithm {conf.algorithm!r} needs a classification data set; "
                          f"data.dataset {conf.data.dataset!r} is a {info.task} data set")
    name = auto_model(info) if conf.model == "auto" else ALIASES.get(conf.model, conf.model)
    return build_model(name, info.in_channels, info.num_classes, info.image_size)


def build_model(name, in_channels, num_classes, image_size):
    """The model registered as `name`; an unknown name is a ConfigError naming the `model` key."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size)


__all__ = ["BlockNet", "LeNet5", "MLP", "SmallCNN", "MODELS", "auto_model", "build_model", "classification_model",
           "has_batch_norm", "register_model_builder"]
