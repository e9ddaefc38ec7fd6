"""Person ReID data: one small reader per on-disk layout, an image loader, and a synthetic data generator.

A ReID data set is one edge (client) of FedUReID. Readers return record lists (path, pid, camid); camera ids
are the numbers written in the file names. pid -1 is junk: dropped from train and query, kept in the gallery
where evaluation ignores it; pid 0 (Market's distractors) stays in the gallery and never matches a query.
"""
import json
import math
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFilter

from fedcmd_plugin.errors import ConfigError, DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
GENERATOR_LOCK = ".generating.lock"  # in a synthetic root: held while edges are written
JUNK_PID = -1
DISTRACTOR_PID = 0


class ReidRecord(NamedTuple):
    """One image: its file, identity (-1 junk, 0 distractor) and camera."""
    path: Path
    pid: int
    camid: int


class ReidSplits(NamedTuple):
    """The three record lists of one ReID data set."""
    train: list
    query: list
    gallery: list


class Market1501Layout:
    """Market-1501: ``<root>/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_NN.jpg``."""

    name = "Market-1501"
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    expected = "<root>/{bounding_box_train,bounding_box_test,query}/PPPP_cCsS_FFFFFF_NN.jpg"
    file_name = re.compile(r"^(-?\d+)_c(\d+)")  # pid and camera; the rest of the name is not needed

    def __init__(self, root):
        self.root = Path(root)

    def read(self):
        """The train, query and gallery records; a missing folder or unparsable name is a DataError."""
        return ReidSplits(**{split: _keep(split, self._records(self._folder(split))) for split in self.folders})

    def _folder(self, split):
        folder = self.root / self.folders[split]
        if not folder.is_dir():
            raise DataError(f"{self.name} folder {folder} does not exist; expected {self.expected}")
        return folder

    def _records(self, folder):
        records = []
        for path in _images(folder):
            match = self.file_name.match(path.name)
            if not match:
                raise DataError(f"{self.name} image {path}: cannot read pid and camera from the name; "
                                f"expected {self.expected}")
            records.append(ReidRecord(path, int(match.group(1)), int(match.group(2))))
        return records


class EasyFLReidLayout(Market1501Layout):
    """EasyFL's federated ReID layout: ``<root>/pytorch/{train_all,query,gallery}/<pid>/<image>``.

    The pid is the folder name, the camera the ``c<number>`` part of the file name (``0002_c1s1_..._01.jpg``).
    """

    name = "EasyFL ReID"
    folders = {"train": "pytorch/train_all", "query": "pytorch/query", "gallery": "pytorch/gallery"}
    expected = "<root>/pytorch/{train_all,gallery,query}/<pid>/<name with _c<camera>>.jpg"
    camera = re.compile(r"(?:^|_)c(\d+)")

    def _records(self, folder):
        records = []
        for pid_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not re.fullmatch(r"-?\d+", pid_folder.name):
                raise DataError(f"{self.name} folder {pid_folder}: the folder name must be a pid (an integer); "
                                f"expected {self.expected}")
            for path in _images(pid_folder):
                match = self.camera.search(path.stem)
                if not match:
                    raise DataError(f"{self.name} image {path}: no camera (_c<number>) in the name; "
                                    f"expected {self.expected}")
                records.append(ReidRecord(path, int(pid_folder.name), int(match.group(1))))
        return records


def _images(folder):
    """Image files of a folder, sorted so every reader is deterministic (other files, e.g. Thumbs.db, skipped)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _keep(split, records):
    """Junk never trains and never queries; the gallery keeps it for evaluation to ignore."""
    return records if split == "gallery" else [r for r in records if r.pid != JUNK_PID]


def load_images(records, image_size=(64, 32)):
    """Decode and resize images to a uint8 tensor [N, 3, h, w]; returns (images, kept_records, skipped).

    An unreadable or corrupt file is skipped and counted (one warning per call), so one bad file does not stop
    a round.
    """
    height, width = image_size
    if height < 1 or width < 1:
        raise ConfigError(f"image_size: expected (height, width) >= 1, got {image_size!r}")
    arrays, kept, bad = [], [], []
    for record in records:
        try:
            with Image.open(record.path) as image:
                image = image.convert("RGB").resize((width, height), Image.BILINEAR)
        except (OSError, ValueError, SyntaxError):  # what PIL raises for missing, truncated or non-image files
            bad.append(record.path)
            continue
        arrays.append(np.asarray(image))
        kept.append(record)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable ReID images (first: {bad[0]})", stacklevel=2)
    if not arrays:
        return torch.zeros(0, 3, height, width, dtype=torch.uint8), kept, len(bad)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), kept, len(bad)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic multi-camera pedestrians
# ---------------------------------------------------------------------------------------------------------------

SYNTHETIC_VERSION = 1  # bump when rendering changes, so an old folder is not reused as if it were current
SYNTHETIC_INFO = "synthetic.json"
PALETTE = np.array([  # clothing colours (RGB in 0..1); few enough that identities share some
    [0.85, 0.15, 0.15], [0.15, 0.35, 0.80], [0.15, 0.60, 0.25], [0.90, 0.80, 0.20], [0.95, 0.95, 0.95],
    [0.10, 0.10, 0.12], [0.55, 0.55, 0.58], [0.55, 0.30, 0.15], [0.60, 0.20, 0.60], [0.95, 0.55, 0.15],
    [0.20, 0.70, 0.75], [0.95, 0.60, 0.70],
])
SKIN = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.52], [0.67, 0.46, 0.33], [0.42, 0.28, 0.20]])
PATTERNS = ("plain", "hstripes", "vstripes", "checker", "logo")
FACINGS = ("front", "back", "side")


def generate_synthetic(root, edges=4, identities=30, test_identities=20, cameras=4, images_per_camera=4,
                       distractors=10, junk=5, image_size=(64, 32), seed=0, overwrite=False):
    """Write `edges` synthetic ReID data sets in the Market-1501 layout under ``root/edge_<k>``; their paths.

    Each edge has its own people (`identities` for training, an int or one per edge, and `test_identities`
    for query/gallery, with distinct pids as in Market), seen by `cameras` cameras that differ in viewpoint,
    light, colour cast, blur and background, plus an edge-wide style; the gallery also holds `distractors`
    (pid 0) and `junk` (pid -1) images. Same arguments, same bytes. An edge is written to a temporary folder
    and renamed when complete; an existing edge with the same arguments is reused, one with other arguments
    is replaced only with `overwrite`. Processes generating into one root (the ranks of a distributed run) take
    turns, so each edge is written once and never removed under another process.
    """
    per_edge = _per_edge_identities(identities, edges)
    for name, value, low in (("test_identities", test_identities, 1), ("cameras", cameras, 2),
                             ("images_per_camera", images_per_camera, 1), ("distractors", distractors, 0),
                             ("junk", junk, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"synthetic {name}: expected an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synthetic seed: expected an integer >= 0, got {seed!r}")
    height, width = image_size
    if height < 16 or width < 8:
        raise ConfigError(f"synthetic image_size: expected at least (16, 8), got {image_size!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    with exclusive(root / GENERATOR_LOCK):
        for edge in range(edges):
            info = {"version": SYNTHETIC_VERSION, "edge": edge, "identities": per_edge[edge],
                    "test_identities": test_identities, "cameras": cameras, "images_per_camera": images_per_camera,
                    "distractors": distractors, "junk": junk, "image_size": [height, width], "seed": seed}
            final = root / f"edge_{edge}"
            paths.append(final)
            if final.exists():
                if _read_info(final) == info:
                    continue
                if not overwrite:
                    raise DataError(f"synthetic data folder {final} exists with other settings; use another root "
                                    "or overwrite=True")
            partial = root / f".edge_{edge}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
            _write_edge(partial, info)
            (partial / SYNTHETIC_INFO).write_text(json.dumps(info, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
    return paths


@contextmanager
def exclusive(path):
    """An exclusive lock on file `path` (created when missing) while the block runs; other processes wait."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _per_edge_identities(identities, edges):
    """Training identity count of each edge from an int or a per-edge list."""
    if isinstance(edges, bool) or not isinstance(edges, int) or edges < 1:
        raise ConfigError(f"synthetic edges: expected an integer >= 1, got {edges!r}")
    counts = [identities] * edges if isinstance(identities, int) else list(identities)
    if len(counts) != edges or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ConfigError(f"synthetic identities: expected an integer >= 1 or {edges} of them, got {identities!r}")
    return counts


def _read_info(folder):
    """The settings a finished edge folder was written with (None if unreadable)."""
    try:
        return json.loads((folder / SYNTHETIC_INFO).read_text())
    except (OSError, ValueError):
        return None


def _write_edge(folder, info):
    """Render one edge: train ids 1..T, test ids T+1..T+Q (one query per camera, the rest gallery)."""
    rng = np.random.default_rng([info["seed"], info["edge"]])
    size = tuple(info["image_size"])
    style = _edge_style(rng)
    cams = [_camera(rng, style) for _ in range(info["cameras"])]
    train_ids, test_ids = info["identities"], info["test_identities"]
    people = [_person(rng) for _ in range(train_ids + test_ids + info["distractors"])]
    for split in Market1501Layout.folders.values():
        (folder / split).mkdir(parents=True)
    frame = 0

    def save(split, pid, cam, image, index):
        nonlocal frame
        frame += 1
        name = f"{pid:04d}" if pid >= 0 else str(pid)  # Market writes junk as -1, not -001
        image.save(folder / split / f"{name}_c{cam + 1}s1_{frame:06d}_{index:02d}.jpg", quality=90)

    for pid in range(1, train_ids + test_ids + 1):
        test = pid > train_ids
        for cam, camera in enumerate(cams):
            shots = info["images_per_camera"] + (1 if test else 0)
            for index in range(shots):
                split = ("query" if index == 0 else "bounding_box_test") if test else "bounding_box_train"
                save(split, pid, cam, _render(people[pid - 1], camera, style, rng, size), index)
    for number in range(info["distractors"]):
        cam = int(rng.integers(len(cams)))
        save("bounding_box_test", DISTRACTOR_PID, cam,
             _render(people[train_ids + test_ids + number], cams[cam], style, rng, size), 0)
    for index in range(info["junk"]):  # a badly cropped detection: mostly background, a sliver of someone
        cam = int(rng.integers(len(cams)))
        person = people[int(rng.integers(len(people)))]
        save("bounding_box_test", JUNK_PID, cam, _render(person, cams[cam], style, rng, size, junk=True), index)


def _edge_style(rng):
    """What one edge's cameras share: colour rendition (saturation, gamma, tint) and background palette."""
    return {"saturation": rng.uniform(0.6, 1.2), "gamma": rng.uniform(0.8, 1.25),
            "tint": rng.uniform(0.9, 1.1, 3), "ground": rng.uniform(0.25, 0.7, 3)}


def _camera(rng, style):
    """Per-camera viewpoint (shift, scale, facing), light, colour cast, blur, noise and background."""
    return {"shift": rng.uniform(-0.1, 0.1), "scale": rng.uniform(0.88, 1.0),
            "facing": FACINGS[int(rng.integers(len(FACINGS)))], "light": rng.uniform(0.75, 1.2),
            "cast": rng.uniform(0.88, 1.12, 3), "blur": rng.uniform(0.0, 1.0), "noise": rng.uniform(0.01, 0.04),
            "wall": np.clip(0.5 * (style["ground"] + rng.uniform(-0.25, 0.25, 3)) + 0.25, 0, 1),  # muted
            "floor": np.clip(style["ground"] * rng.uniform(0.5, 0.9), 0, 1), "texture": int(rng.integers(3))}


def _person(rng):
    """An identity: clothing colours and pattern, body shape, skin, hair, shoes and bag."""
    upper, lower = rng.choice(len(PALETTE), 2, replace=False)
    return {"upper": PALETTE[upper] * rng.uniform(0.85, 1.0), "lower": PALETTE[lower] * rng.uniform(0.85, 1.0),
            "accent": PALETTE[int(rng.integers(len(PALETTE)))], "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))],
            "period": int(rng.integers(2, 5)), "width": rng.uniform(0.75, 1.15), "height": rng.uniform(0.86, 0.97),
            "legs": rng.uniform(0.42, 0.5), "skin": SKIN[int(rng.integers(len(SKIN)))],
            "hair": rng.uniform(0.05, 0.5) * np.array([1.0, 0.8, 0.6]), "long_hair": bool(rng.random() < 0.35),
            "shorts": bool(rng.random() < 0.25), "shoes": rng.uniform(0.05, 0.9, 3),
            "bag": ("none", "backpack", "handbag")[int(rng.integers(3))], "bag_colour": rng.uniform(0.05, 0.8, 3)}


def _render(person, camera, style, rng, size, junk=False):
    """One RGB image of `person` seen by `camera`, with a random walking pose and framing jitter."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = _background(camera, yy, xx, height, width, rng)

    body_h = height * person["height"] * camera["scale"] * rng.uniform(0.96, 1.04)
    top = height * 0.98 - body_h + rng.uniform(-1.5, 1.5)
    centre = width * (0.5 + camera["shift"]) + rng.uniform(-1.5, 1.5)
    if junk:  # shifted mostly out of the crop
        centre += width * rng.choice([-1, 1]) * rng.uniform(0.45, 0.6)
    side = camera["facing"] == "side"
    half = width * 0.26 * person["width"] * camera["scale"] * (0.7 if side else 1.0)
    v = (yy - top) / body_h  # 0 at the top of the head, 1 at the soles
    u = (xx - centre) / half  # -1..1 across the shoulders
    stride = 0.25 * math.sin(rng.uniform(0, 2 * math.pi))

    hip = 1.0 - person["legs"]
    head = ((u / 0.55) ** 2 + ((v - 0.075) / 0.075) ** 2) < 1
    hair = head & (v < 0.05) | (person["long_hair"] & (np.abs(u) < 0.6) & (v > 0.03) & (v < 0.22)
                                & (np.abs(u) > 0.35))
    torso = (v >= 0.15) & (v < hip) & (np.abs(u) < 1.0 - 0.15 * (v - 0.15))
    arms = (v >= 0.16) & (v < hip + 0.03) & (np.abs(u) >= 1.0) & (np.abs(u) < 1.3)
    leg_centres = (-0.45 - stride, 0.45 + stride) if not side else (-stride, stride)
    legs = (v >= hip) & (v < 0.96) & ((np.abs(u - leg_centres[0]) < 0.38) | (np.abs(u - leg_centres[1]) < 0.38))
    shoes = (v >= 0.96) & (v < 1.0) & ((np.abs(u - leg_centres[0]) < 0.45) | (np.abs(u - leg_centres[1]) < 0.45))

    shade = (1.0 - 0.25 * np.clip(np.abs(u), 0, 1.3) ** 2) * (1.05 - 0.15 * v)  # light from above, round body
    upper = _pattern(person, yy - top, xx - centre, camera["facing"], u, v)
    lower_legs = person["skin"] if person["shorts"] else person["lower"]
    leg_colour = np.where((v < hip + 0.5 * person["legs"])[..., None], person["lower"], lower_legs)
    for mask, colour in ((legs, leg_colour), (shoes, person["shoes"]), (torso, upper), (arms, person["upper"] * 0.9),
                         (head, person["skin"]), (hair, person["hair"])):
        image = np.where(mask[..., None], np.broadcast_to(colour, image.shape) * shade[..., None], image)
    bag = _bag(person["bag"], camera["facing"], u, v, hip)
    image = np.where(bag[..., None], person["bag_colour"] * shade[..., None], image)

    if rng.random() < 0.15:  # something passing in front: a vertical bar across part of the body
        left = rng.uniform(0, width - 3)
        bar = (xx >= left) & (xx < left + rng.uniform(2, width * 0.3)) & (yy > rng.uniform(0, height * 0.6))
        image = np.where(bar[..., None], rng.uniform(0.1, 0.8, 3), image)
    image = image * camera["light"] * rng.uniform(0.9, 1.1) * camera["cast"] * style["tint"]
    gray = image.mean(axis=2, keepdims=True)
    image = np.clip(gray + style["saturation"] * (image - gray), 0, 1) ** style["gamma"]
    image = np.clip(image + rng.normal(0, camera["noise"], image.shape), 0, 1)
    picture = Image.fromarray((image * 255).round().astype(np.uint8))
    return picture.filter(ImageFilter.GaussianBlur(camera["blur"])) if camera["blur"] > 0.2 else picture


def _background(camera, yy, xx, height, width, rng):
    """A wall over a floor; the wall textured per camera (plain gradient, tiles or vertical structures)."""
    horizon = height * rng.uniform(0.55, 0.7)
    tone = np.clip(camera["wall"] + rng.uniform(-0.12, 0.12, 3), 0, 1)  # the scene changes a little per shot
    wall = np.broadcast_to(tone, (height, width, 3)) * (0.85 + 0.3 * (yy / height))[..., None]
    if camera["texture"] == 1:
        wall = wall * (1 - 0.15 * ((np.floor(yy / 6) + np.floor(xx / 6)) % 2))[..., None]
    elif camera["texture"] == 2:
        wall = wall * (1 - 0.25 * (np.sin(xx / width * 9 + camera["shift"] * 20) > 0.6))[..., None]
    floor = np.broadcast_to(camera["floor"], (height, width, 3))
    return np.where((yy > horizon)[..., None], floor, wall)


def _pattern(person, dy, dx, facing, u, v):
    """Torso colour per pixel: plain, stripes, checks, or a chest logo seen only from the front."""
    base, accent = person["upper"], person["accent"] * 0.9
    period = person["period"]
    pattern = person["pattern"]
    if pattern == "hstripes":
        on = np.floor(dy / period) % 2 == 1
    elif pattern == "vstripes":
        on = np.floor(dx / period) % 2 == 1
    elif pattern == "checker":
        on = (np.floor(dy / period) + np.floor(dx / period)) % 2 == 1
    elif pattern == "logo":
        on = (facing == "front") & (np.abs(u) < 0.45) & (v > 0.22) & (v < 0.34)
    else:
        on = np.zeros_like(dy, dtype=bool)
    return np.where(on[..., None], accent, base)


def _bag(kind, facing, u, v, hip):
    """Where the bag shows: a backpack covers the back, a handbag hangs at the side (hidden from the front)."""
    if kind == "backpack" and facing != "front":
        return (np.abs(u - (0.9 if facing == "side" else 0.0)) < 0.6) & (v > 0.18) & (v < hip - 0.05)
    if kind == "handbag" and facing != "front":
        return (u > 1.0) & (u < 1.8) & (v > hip - 0.12) & (v < hip + 0.08)
    return np.zeros_like(u, dtype=bool)
