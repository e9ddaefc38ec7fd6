"""Data: local readers, federated partitions and the per-client tensors EasyFL trains on.

Every built-in data set is registered here: the image classification sets in `federated.BUILDERS`, the ReID
edge sets below, so `data.dataset` knows them all whichever algorithm module is imported.
"""
from fedcmd_plugin.data import synthetic  # noqa: F401  (registers data.dataset: synthetic)
from fedcmd_plugin.data.federated import DataInfo, FederatedData, load_federated, register_data
from fedcmd_plugin.data.reid_edges import REID_CONFIG_KEYS, REID_DATASETS, build_reid

for _name in REID_DATASETS:
    register_data(_name, build_reid, REID_CONFIG_KEYS)

__all__ = ["DataInfo", "FederatedData", "load_federated", "register_data"]
