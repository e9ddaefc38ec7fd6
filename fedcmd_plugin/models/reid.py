"""ReID feature extractor: backbone -> global average pooling -> embedding (linear + BN) -> L2-normalised.

There is no classifier: FedUReID classifies with each edge's cluster memory, which stays on the edge. Every
parameter and buffer lives under ``backbone.`` or ``embedding.``, the parts the server aggregates.
"""
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedcmd_plugin.errors import ConfigError

BACKBONES = ("small", "resnet18", "resnet50")
MODEL_NAMES = {"auto": "small", "reid_small": "small", "reid_resnet18": "resnet18", "reid_resnet50": "resnet50"}
AGGREGATED_PREFIXES = ("backbone.", "embedding.")
SMALL_WIDTHS = (16, 32, 64, 128)
# Horizontal stripes pooled separately (head/torso/legs...): one global average would mix the colours of the
# upper and lower body, which tell pedestrians apart.
STRIPES = 4
RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ReidNet(nn.Module):
    """Backbone + embedding giving [B, embedding_dim] unit-norm features.

    `backbone`: "small" (a 4-stage CNN, fast on CPU at 64x32), or "resnet18"/"resnet50" (torchvision, built
    without weights; the last stage keeps stride 1, as usual for ReID, so 64x32 inputs still give a 4x2 map).
    `pretrained_path`: a local torchvision-style state_dict for the backbone (e.g. ImageNet weights); its
    classifier keys (``fc.*``) are ignored, any other mismatch is an error.
    """

    def __init__(self, backbone="small", embedding_dim=128, pretrained_path=None, image_size=(64, 32)):
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"model backbone: unknown {backbone!r}; expected one of {', '.join(BACKBONES)}")
        if embedding_dim < 1:
            raise ConfigError(f"model embedding_dim: expected an integer >= 1, got {embedding_dim!r}")
        height, width = image_size
        if min(height, width) < 16:
            raise ConfigError(f"model image_size: expected at least 16x16 pixels, got {height}x{width}")
        self.image_size = (height, width)
        self.backbone, channels = _small_cnn() if backbone == "small" else _resnet(backbone)
        if pretrained_path is not None:
            _load_backbone(self.backbone, pretrained_path)
        self.embedding = nn.Sequential(nn.Linear(channels * STRIPES, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.out_dim = embedding_dim

    def forward(self, images):
        """[B, 3, H, W] float images -> [B, embedding_dim] L2-normalised features."""
        pooled = F.adaptive_avg_pool2d(self.backbone(images), (STRIPES, 1)).flatten(1)
        return F.normalize(self.embedding(pooled), dim=1)

    def aggregated_keys(self):
        """State-dict keys the server averages: all of them, since the memory classifier is not in the model."""
        return [key for key in self.state_dict() if key.startswith(AGGREGATED_PREFIXES)]


def _small_cnn():
    """Four conv-BN-ReLU stages, 2x2 pooling after the first three (64x32 -> 8x4); returns (module, channels)."""
    layers, channels = OrderedDict(), 3
    for i, width in enumerate(SMALL_WIDTHS, start=1):
        stage = [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if i < len(SMALL_WIDTHS):
            stage.append(nn.MaxPool2d(2, ceil_mode=True))
        layers[f"stage{i}"] = nn.Sequential(*stage)
        channels = width
    return nn.Sequential(layers), channels


def _resnet(name):
    """torchvision ResNet without its pooling and fc, keeping torchvision's key names; (module, channels)."""
    import torchvision  # only for the ResNet backbones: importing it costs a second at every start-up

    net = getattr(torchvision.models, name)(weights=None)
    for module in net.layer4[0].modules():  # last stride 1: the block's strided conv and its shortcut
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
    return nn.Sequential(OrderedDict((stage, getattr(net, stage)) for stage in RESNET_STAGES)), net.fc.in_features


def _load_backbone(backbone, path):
    """Load a local state_dict into the backbone; a one-line ConfigError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model_init.params_file {path} does not exist; put a backbone state_dict (.pth) there "
                          f"(nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for an unreadable file
        raise ConfigError(f"model_init.params_file {path} is not a readable state_dict: {exc}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"model_init.params_file {path} must hold a state_dict, got {type(state).__name__}")
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    own = backbone.state_dict()
    # Older torchvision weight files have no BatchNorm step counters; load_state_dict fills them in.
    missing = sorted(key for key in set(own) - set(state) if not key.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = [key for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(f"model_init.params_file {path} does not fit the backbone: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    backbone.load_state_dict(state)


def reid_model(conf, info):
    """The ReID network config key `model` names (MODEL_NAMES), for a ReID data set (`info`: its DataInfo)."""
    if info.task != "reid":
        raise ConfigError(f"algorithm {conf.algorithm!r} needs a ReID data set (synthetic_reid, market1501, "
                          f"easyfl_reid); data.dataset is {conf.data.dataset!r}")
    if conf.model not in MODEL_NAMES:
        raise ConfigError(f"config key 'model' must be one of {', '.join(MODEL_NAMES)} for {conf.algorithm}; "
                          f"got {conf.model!r}")
    return ReidNet(MODEL_NAMES[conf.model], conf.fedureid.embedding_dim, conf.fedureid.pretrained_backbone,
                   tuple(conf.fedureid.image_size))
