"""Registers FedUReID (its Local-only and Baseline variants are configs of the same code)."""
from fedcmd_plugin.fedureid.client import FedUReIDClient
from fedcmd_plugin.fedureid.server import FedUReIDServer
from fedcmd_plugin.models.reid import reid_model
from fedcmd_plugin.registry import Algorithm, register_algorithm

register_algorithm(Algorithm("fedureid", FedUReIDServer, FedUReIDClient, reid_model,
                             "FedUReID: federated unsupervised person ReID (BUC + memory bank + joint optimisation)"))
