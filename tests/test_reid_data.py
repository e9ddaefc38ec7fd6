"""ReID data: synthetic generator, both layout readers, tolerant image loading, clear errors."""
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from fedcmd_plugin.data import reid
from fedcmd_plugin.data.reid import EasyFLReidLayout, Market1501Layout, generate_synthetic, load_images
from fedcmd_plugin.errors import DataError

SMALL = dict(edges=2, identities=3, test_identities=2, cameras=2, images_per_camera=2, distractors=1, junk=1,
             image_size=(32, 16))


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_writes_a_market_layout(tmp_path):
    edges = generate_synthetic(tmp_path, **SMALL)
    assert [p.name for p in edges] == ["edge_0", "edge_1"]
    splits = Market1501Layout(edges[0]).read()
    assert len(splits.train) == 3 * 2 * 2 and len(splits.query) == 2 * 2
    assert len(splits.gallery) == 2 * 2 * 2 + 1 + 1
    assert {r.pid for r in splits.train} == {1, 2, 3}
    assert {r.pid for r in splits.query} == {4, 5}  # test identities are not training identities
    assert {r.pid for r in splits.gallery} == {-1, 0, 4, 5}
    assert any(r.path.name.startswith("-1_c") for r in splits.gallery)  # junk named as in Market
    assert {r.camid for r in splits.train + splits.query + splits.gallery} == {1, 2}
    images, kept, skipped = load_images(splits.train, image_size=(32, 16))
    assert images.shape == (12, 3, 32, 16) and images.dtype == torch.uint8 and skipped == 0 and kept == splits.train
    assert not list(tmp_path.glob(".*partial"))


def test_generator_is_deterministic_under_the_seed(tmp_path):
    first, second, other = (generate_synthetic(tmp_path / name, seed=seed, **SMALL)[0]
                            for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert files(first) == files(second)
    assert files(first) != files(other)
    assert files(first) != files(first.parent / "edge_1")  # edges differ from each other


def test_generator_reuses_refuses_and_overwrites(tmp_path):
    edge = generate_synthetic(tmp_path, **SMALL)[0]
    marker = edge / "bounding_box_train" / "marker.txt"
    marker.write_text("kept when the same settings are asked for again")
    generate_synthetic(tmp_path, **SMALL)
    assert marker.exists()
    with pytest.raises(DataError, match="edge_0"):
        generate_synthetic(tmp_path, **{**SMALL, "seed": 5})
    generate_synthetic(tmp_path, overwrite=True, **{**SMALL, "seed": 5})
    assert not marker.exists()


def test_interrupted_generation_leaves_no_complete_looking_edge(tmp_path, monkeypatch):
    write_edge = reid._write_edge

    def fail_on_second_edge(folder, info):
        if info["edge"] == 1:
            (folder / "bounding_box_train").mkdir(parents=True)
            raise KeyboardInterrupt
        write_edge(folder, info)

    monkeypatch.setattr(reid, "_write_edge", fail_on_second_edge)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, **SMALL)
    assert (tmp_path / "edge_0").is_dir() and not (tmp_path / "edge_1").exists()
    monkeypatch.setattr(reid, "_write_edge", write_edge)
    generate_synthetic(tmp_path, **SMALL)
    assert len(Market1501Layout(tmp_path / "edge_1").read().train) == 12
    assert not (tmp_path / ".edge_1.partial").exists()


def test_concurrent_generators_write_each_edge_once(tmp_path, monkeypatch):
    """Two generators on one root at once (as the ranks of a distributed run): they take turns, so each edge is
    written once and both get the same, complete edges."""
    written, write_edge = [], reid._write_edge

    def recording(folder, info):
        written.append(info["edge"])
        write_edge(folder, info)

    monkeypatch.setattr(reid, "_write_edge", recording)
    start = threading.Barrier(2)

    def generate(_):
        start.wait()
        return generate_synthetic(tmp_path, **SMALL)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(generate, range(2))
    assert first == second and sorted(written) == [0, 1]
    assert all(len(Market1501Layout(edge).read().train) == 12 for edge in first)


@pytest.fixture
def jpeg(tmp_path):
    path = tmp_path / "source.jpg"
    Image.new("RGB", (16, 32), (200, 30, 30)).save(path)
    return path


def test_market_reader_parses_pids_cameras_and_junk(tmp_path, jpeg):
    names = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0007_c3s2_001000_01.jpg", "-1_c2s1_000001_00.jpg"],
             "query": ["0002_c2s1_000301_00.jpg"],
             "bounding_box_test": ["0002_c4s1_000100_02.jpg", "0000_c1s1_000151_01.jpg", "-1_c6s1_000401_03.jpg"]}
    for folder, files_ in names.items():
        (tmp_path / folder).mkdir()
        for name in files_:
            shutil.copy(jpeg, tmp_path / folder / name)
    (tmp_path / "query" / "Thumbs.db").write_bytes(b"not an image")
    splits = Market1501Layout(tmp_path).read()
    assert [(r.pid, r.camid) for r in splits.train] == [(2, 1), (7, 3)]  # junk dropped from train
    assert [(r.pid, r.camid) for r in splits.query] == [(2, 2)]
    assert sorted((r.pid, r.camid) for r in splits.gallery) == [(-1, 6), (0, 1), (2, 4)]


def test_easyfl_reader_parses_pid_folders_and_cameras(tmp_path, jpeg):
    layout = {"train_all": {"0002": ["0002_c1s1_000451_03.jpg"], "0010": ["0010_c5_f0001.jpg"]},
              "query": {"0002": ["0002_c2s1_000301_00.jpg"]},
              "gallery": {"0002": ["0002_c3s1_000100_02.jpg"], "-1": ["-1_c1s1_000401_03.jpg"],
                          "0000": ["0000_c2s1_000151_01.jpg"]}}
    for split, pids in layout.items():
        for pid, names in pids.items():
            folder = tmp_path / "pytorch" / split / pid
            folder.mkdir(parents=True)
            for name in names:
                shutil.copy(jpeg, folder / name)
    splits = EasyFLReidLayout(tmp_path).read()
    assert [(r.pid, r.camid) for r in splits.train] == [(2, 1), (10, 5)]
    assert [(r.pid, r.camid) for r in splits.query] == [(2, 2)]
    assert sorted((r.pid, r.camid) for r in splits.gallery) == [(-1, 1), (0, 2), (2, 3)]


def test_missing_folder_names_it_and_the_layout(tmp_path):
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(DataError, match=r"query.*bounding_box_train,bounding_box_test,query"):
        Market1501Layout(tmp_path).read()
    with pytest.raises(DataError, match=r"pytorch/train_all.*pytorch/\{train_all,gallery,query\}"):
        EasyFLReidLayout(tmp_path).read()


def test_unparsable_file_name_is_an_error(tmp_path, jpeg):
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / folder).mkdir()
    shutil.copy(jpeg, tmp_path / "query" / "person.jpg")
    with pytest.raises(DataError, match="person.jpg"):
        Market1501Layout(tmp_path).read()


def test_corrupt_images_are_skipped_and_counted(tmp_path, jpeg):
    good = reid.ReidRecord(jpeg, 1, 1)
    truncated = tmp_path / "0001_c1s1_000002_00.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # header fine, data cut
    garbage = tmp_path / "0001_c1s1_000003_00.jpg"
    garbage.write_bytes(b"\x00" * 100)
    records = [good, reid.ReidRecord(truncated, 1, 1), reid.ReidRecord(garbage, 1, 2), good]
    with pytest.warns(UserWarning, match="skipped 2"):
        images, kept, skipped = load_images(records, image_size=(8, 4))
    assert skipped == 2 and kept == [good, good] and images.shape == (2, 3, 8, 4)
    assert images[0, 0].float().mean() > 150  # the red channel of the red test image


def test_configs_differing_only_in_reid_keys_get_their_own_data(small_digits_config, tmp_path):
    """The in-process data cache is keyed by everything the builder reads, fedureid.image_size included: a second
    run in the same process over the same folder with another image size must not get the first run's images."""
    from fedcmd_plugin.data import load_federated

    generate_synthetic(tmp_path / "edges", edges=2, identities=3, test_identities=2, cameras=2, images_per_camera=1,
                       image_size=(32, 16), seed=0)
    market = {"algorithm": "fedureid", "data.dataset": "market1501", "data.path": tmp_path / "edges"}
    first = load_federated(small_digits_config(**market, **{"fedureid.image_size": [32, 16]}))
    resized = load_federated(small_digits_config(**market, **{"fedureid.image_size": [16, 8]}))
    assert tuple(first.train.part("c000", "train").images.shape[-2:]) == (32, 16)
    assert tuple(resized.train.part("c000", "train").images.shape[-2:]) == (16, 8)
