"""Data: local readers, federated partitions and the per-client tensors EasyFL trains on."""
from fedcmd_plugin.data.federated import DataInfo, FederatedData, load_federated, register_data

__all__ = ["DataInfo", "FederatedData", "load_federated", "register_data"]
