"""Registers FedUReID (its Local-only and Baseline variants are configs of the same code)."""
from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.fedureid.client import FedUReIDClient
from fedcmd_plugin.fedureid.server import FedUReIDServer
from fedcmd_plugin.registry import Algorithm, register_algorithm

BACKBONES = {"auto": "small", "reid_small": "small", "reid_resnet18": "resnet18", "reid_resnet50": "resnet50"}


def reid_model(conf, info):
    from fedcmd_plugin.models.reid import ReidNet

    if info.task != "reid":
        raise ConfigError(f"algorithm fedureid needs a ReID data set (synthetic_reid, market1501, easyfl_reid); "
                          f"data.dataset is {conf.data.dataset!r}")
    if conf.model not in BACKBONES:
        raise ConfigError(f"config key 'model' must be one of {', '.join(BACKBONES)} for fedureid; got {conf.model!r}")
    return ReidNet(BACKBONES[conf.model], conf.fedureid.embedding_dim, conf.fedureid.pretrained_backbone,
                   tuple(conf.fedureid.image_size))


register_algorithm(Algorithm("fedureid", FedUReIDServer, FedUReIDClient, reid_model,
                             "FedUReID: federated unsupervised person ReID (BUC + memory bank + joint optimisation)"))
