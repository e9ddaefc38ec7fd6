"""Registers FedCMD."""
from fedcmd_plugin.fedcmd.client import FedCMDClient
from fedcmd_plugin.fedcmd.server import FedCMDServer
from fedcmd_plugin.models import classification_model
from fedcmd_plugin.registry import Algorithm, register_algorithm

register_algorithm(Algorithm("fedcmd", FedCMDServer, FedCMDClient, classification_model,
                             "FedCMD: Wasserstein-selected personalised layer + similarity-weighted aggregation"))
