"""ReID data as federated data (FedUReID's): one edge (client) per ReID data set, each with unlabeled training images (their
hidden ids kept only to measure pseudo-label quality) and its own query/gallery for evaluation.

data.dataset: synthetic_reid (generated offline into data.path or data.root/synthetic_reid), market1501
(data.path holds one Market-1501 folder per edge) or easyfl_reid (data.path holds EasyFL's
<dataset>/pytorch/{train_all,gallery,query} folders, one per edge).
"""
from pathlib import Path

import torch

from fedcmd_plugin.data.federated import ClientDataset, DataInfo, FederatedData, client_ids
from fedcmd_plugin.data.reid import EasyFLReidLayout, Market1501Layout, generate_synthetic, load_images
from fedcmd_plugin.errors import DataError
from fedcmd_plugin.session import logger

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class EdgeImages:
    """One split of one edge: uint8 images [N,3,H,W] (normalised per batch to save memory), ids, cameras."""

    def __init__(self, images, records):
        self.images = images
        self.pids = torch.tensor([r.pid for r in records], dtype=torch.long)
        self.cams = torch.tensor([r.camid for r in records], dtype=torch.long)

    def __len__(self):
        return len(self.pids)

    def batch(self, index, device):
        x = self.images.index_select(0, index).to(device).float().div_(255)
        return (x - MEAN.to(device)) / STD.to(device)

    def batches(self, batch_size, device, order=None):
        """(indices, normalised images) in `order` (default: stored order)."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield index, self.batch(index, device)


class ReidEdges(ClientDataset):
    """EasyFL's dataset interface over the edges' splits ("train", or "query" + "gallery" for testing)."""

    def __init__(self, ids, splits):
        super().__init__(ids)
        self.splits = dict(zip(self._ids, splits))  # cid -> {"train": EdgeImages} or {"query":..., "gallery":...}

    def client_size(self, cid):
        return sum(len(part) for part in self.splits[cid].values())

    def part(self, cid, name):
        return self.splits[cid][name]

    def loader(self, batch_size, client_id=None, shuffle=True, seed=0, **_):
        """EasyFL's loader API: (images, pids) batches of the client's first split."""
        part = next(iter(self.splits[client_id].values()))
        return [(x, part.pids[i]) for i, x in part.batches(batch_size, "cpu")]


def edge_folders(conf):
    name, path = conf.data.dataset, conf.data.path
    if name == "synthetic_reid":
        s = conf.fedureid.synthetic
        root = Path(path) if path else Path(conf.data.root) / "synthetic_reid"
        return generate_synthetic(root, edges=s.edges, identities=s.identities, test_identities=s.test_identities,
                                  cameras=s.cameras, images_per_camera=s.images_per_camera,
                                  image_size=tuple(conf.fedureid.image_size), seed=conf.seed), Market1501Layout
    if not path:
        raise DataError(f"data.path must name the folder holding one {name} data set per edge")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path {root} does not exist (expected one {name} data set per sub-folder)")
    layout = Market1501Layout if name == "market1501" else EasyFLReidLayout
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"data.path {root} holds no edge folders (one {name} data set per sub-folder)")
    return folders, layout


def build_reid(conf):
    folders, layout = edge_folders(conf)
    size = tuple(conf.fedureid.image_size)
    ids = client_ids(len(folders))
    train, test, rows, skipped = [], [], [], 0
    for cid, folder in zip(ids, folders):
        splits = layout(folder).read()
        parts = {}
        for name in ("train", "query", "gallery"):
            images, kept, bad = load_images(getattr(splits, name), size)
            skipped += bad
            if not kept:
                raise DataError(f"edge {folder}: its {name} split has no readable images")
            parts[name] = EdgeImages(images, kept)
        train.append({"train": parts["train"]})
        test.append({"query": parts["query"], "gallery": parts["gallery"]})
        rows.append({"client": cid, "folder": str(folder), "train": len(parts["train"]),
                     "identities": int(parts["train"].pids.unique().numel()), "query": len(parts["query"]),
                     "gallery": len(parts["gallery"])})
    summary = (f"{conf.data.dataset}: {len(ids)} edges, train images per edge "
               f"{', '.join(str(r['train']) for r in rows)}" + (f", {skipped} unreadable images skipped" if skipped else ""))
    if skipped:
        logger().warning(f"{skipped} unreadable ReID images were skipped")
    info = DataInfo(3, size[0], 0, task="reid")
    return FederatedData(ReidEdges(ids, train), ReidEdges(ids, test), info, summary, rows)


REID_DATASETS = ("synthetic_reid", "market1501", "easyfl_reid")
REID_CONFIG_KEYS = ("fedureid.image_size", "fedureid.synthetic")  # read by build_reid beside `data`
