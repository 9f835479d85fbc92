"""ReID readers and the synthetic generator, on fixtures the generator writes."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dprune.data.reid import (ReIDImageDataset, ReIDRecord, build_reid_dataset, export_list,
                              read_market1501, read_msmt17, read_veri776)
from dprune.data.reid_synth import TRUTH_FILE, make_synthetic_reid

N_IDS, N_CAMS, PER_ID = 10, 4, 6  # 5 training + 5 test identities, each seen by all cameras
N_TRAIN_IDS = math.ceil(N_IDS / 2)


def _make(root, layout, **kw):
    args = dict(n_ids=N_IDS, n_cams=N_CAMS, images_per_id=PER_ID, noise_rate=0.2, seed=3)
    return make_synthetic_reid(root, layout, **{**args, **kw})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One pristine copy of each layout; tests that damage one work on a copy."""
    base = tmp_path_factory.mktemp("reid")
    return {layout: (base / layout, _make(base / layout, layout))
            for layout in ("market1501", "msmt17_v1", "msmt17_v2", "veri776")}


@pytest.fixture
def copy_of(generated, tmp_path):
    def copy(layout):
        dst = tmp_path / layout
        shutil.copytree(generated[layout][0], dst)
        return dst, generated[layout][1]
    return copy


def _check_common(ds, truth):
    counts = truth["counts"]
    assert len(ds.train) == counts["train"]
    assert len(ds.query) == counts["query"]
    assert len(ds.gallery) == counts["gallery"]
    assert ds.num_train_pids == N_TRAIN_IDS
    assert ds.num_cams == N_CAMS
    assert sorted({r.pid for r in ds.train}) == list(range(N_TRAIN_IDS))
    assert sorted(ds.pid_map) == truth["train_ids"]
    assert list(ds.pid_map.values()) == list(range(N_TRAIN_IDS))  # increasing original id
    for split in (ds.train, ds.query, ds.gallery):
        assert all(0 <= r.camid < N_CAMS for r in split)
        assert all((ds.root / r.relpath).is_file() for r in split)
    assert {r.pid for r in ds.query} == set(truth["test_ids"])


# --------------------------------------------------------------------------- Market-1501

def test_market1501_counts_junk_distractors_relabelling(generated):
    root, truth = generated["market1501"]
    ds = read_market1501(root)
    _check_common(ds, truth)
    assert ds.name == "market1501" and ds.root == root.resolve()
    assert truth["counts"]["junk"] == 3 and truth["counts"]["distractors"] == 3
    all_records = ds.train + ds.query + ds.gallery
    assert all(r.pid != -1 for r in all_records)
    assert sum(r.pid == 0 for r in ds.gallery) == 3
    assert all(r.pid != 0 for r in ds.query)
    # The name carries the original id and 1-based camera: 0002_c1s1_... -> (2, 0).
    for r in ds.train:
        name = r.relpath.split("/")[-1]
        assert ds.pid_map[int(name[:4])] == r.pid and int(name[6]) - 1 == r.camid


def test_market1501_drops_junk_and_distractors_outside_gallery(copy_of):
    root, truth = copy_of("market1501")
    src = next((root / "bounding_box_train").iterdir())
    for folder, name in (("bounding_box_train", "-1_c1s1_000001_00.jpg"),
                         ("bounding_box_train", "0000_c2s1_000002_00.jpg"),
                         ("query", "0000_c1s1_000003_00.jpg"),
                         ("query", "-1_c3s1_000004_00.jpg")):
        shutil.copy(src, root / folder / name)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    ds = read_market1501(root)
    assert len(ds.train) == truth["counts"]["train"]
    assert len(ds.query) == truth["counts"]["query"]
    assert ds.num_train_pids == N_TRAIN_IDS


def test_market1501_nested_folder(tmp_path):
    truth = _make(tmp_path / "Market-1501-v15.09.15", "market1501")
    nested = read_market1501(tmp_path)
    direct = read_market1501(tmp_path / "Market-1501-v15.09.15")
    assert nested.root == (tmp_path / "Market-1501-v15.09.15").resolve()
    assert nested.train == direct.train and nested.gallery == direct.gallery
    assert nested.train[0].relpath.startswith("bounding_box_train/")
    _check_common(nested, truth)


def test_market1501_missing_folder(copy_of):
    root, _ = copy_of("market1501")
    shutil.rmtree(root / "query")
    with pytest.raises(ValueError, match=r"missing folder query/"):
        read_market1501(root)


def test_market1501_unparsable_name(copy_of):
    root, _ = copy_of("market1501")
    src = next((root / "bounding_box_train").iterdir())
    shutil.copy(src, root / "bounding_box_train" / "person.jpg")
    with pytest.raises(ValueError, match=r"cannot parse .*person\.jpg"):
        read_market1501(root)


def test_market1501_skips_non_regular_files_and_refuses_huge_ids(copy_of):
    root, truth = copy_of("market1501")
    before = read_market1501(root)
    os.mkfifo(root / "bounding_box_train" / "0002_c1s1_999999_01.jpg")  # reading it would block forever
    after = read_market1501(root)
    assert after.train == before.train
    src = next((root / "bounding_box_train").glob("*.jpg"))
    shutil.copy(src, root / "bounding_box_train" / ("9" * 30 + "_c1s1_000001_01.jpg"))
    with pytest.raises(ValueError, match=r"cannot parse identity and camera .*999999999_c1s1"):
        read_market1501(root)


def test_symlink_out_of_root_is_refused(copy_of, tmp_path):
    root, _ = copy_of("market1501")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (4, 8)).save(outside)
    os.symlink(outside, root / "bounding_box_train" / "0002_c1s1_000001_01.jpg")
    with pytest.raises(ValueError, match="outside the dataset root"):
        read_market1501(root)


# --------------------------------------------------------------------------- MSMT17

@pytest.mark.parametrize("layout,folder,train_dir", [
    ("msmt17_v1", "MSMT17_V1", "train"), ("msmt17_v2", "MSMT17_V2", "mask_train_v2")])
def test_msmt17_versions(generated, layout, folder, train_dir):
    root, truth = generated[layout]
    assert truth["dataset_dir"] == folder
    ds = read_msmt17(root)
    assert ds.root == (root / folder).resolve()
    _check_common(ds, truth)
    assert all(r.relpath.startswith(train_dir + "/") for r in ds.train)
    # 0000_000_01_0303morning_0015_0.jpg -> camera int("01") - 1 = 0.
    for r in ds.gallery:
        assert r.camid == int(r.relpath.split("/")[-1].split("_")[2]) - 1
    # The folder itself works as well as its parent.
    assert read_msmt17(root / folder).train == ds.train


def test_msmt17_combine_train_val(generated):
    root, truth = generated["msmt17_v1"]
    assert truth["counts"]["val"] > 0
    ds = read_msmt17(root, combine_train_val=True)
    assert len(ds.train) == truth["counts"]["train"] + truth["counts"]["val"]
    assert ds.num_train_pids == N_TRAIN_IDS  # val holds images of the training identities


def test_msmt17_missing_folder_and_list(copy_of):
    root, _ = copy_of("msmt17_v1")
    (root / "MSMT17_V1" / "list_gallery.txt").unlink()
    with pytest.raises(ValueError, match=r"missing list file list_gallery\.txt"):
        read_msmt17(root)
    shutil.rmtree(root / "MSMT17_V1" / "test")
    with pytest.raises(ValueError, match=r"missing folder test/"):
        read_msmt17(root)
    with pytest.raises(ValueError, match="no MSMT17_V1/ or MSMT17_V2/"):
        read_msmt17(root / "MSMT17_V1" / "train")


@pytest.mark.parametrize("line,message", [
    ("0000/0000_000_01_0303morning_0001_0.jpg", r"expected 'relpath pid'"),
    ("0000/person.jpg 0", r"cannot parse the camera .*person\.jpg"),
    ("../../../0000_000_01_0303morning_0001_0.jpg 0", "outside the dataset root"),
    ("/etc/0000_000_01_0303morning_0001_0.jpg 0", "refusing absolute path"),
    ("0000/0000_999_01_0303morning_9999_0.jpg 0", "image not found"),
    ("0000/0000_000_01_0303morning_0001_0.jpg " + "9" * 30, r"expected 'relpath pid'"),  # no int64 overflow
])
def test_msmt17_bad_list_line(copy_of, line, message):
    root, _ = copy_of("msmt17_v1")
    with open(root / "MSMT17_V1" / "list_query.txt", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_msmt17(root)
    assert "list_query.txt:" in str(info.value)  # names the file and line


# --------------------------------------------------------------------------- VeRi-776

def test_veri776(generated):
    root, truth = generated["veri776"]
    ds = read_veri776(root)
    _check_common(ds, truth)
    # image_test/ also holds the query images, as in the real dataset.
    test_names = {r.relpath.split("/")[-1] for r in ds.gallery}
    assert {r.relpath.split("/")[-1] for r in ds.query} <= test_names
    name = ds.query[0].relpath.split("/")[-1]  # 0001_c001_00016450_0.jpg
    assert ds.query[0].pid == int(name[:4]) and ds.query[0].camid == int(name[6:9]) - 1


def test_veri776_missing_folder_and_unparsable(copy_of):
    root, _ = copy_of("veri776")
    src = next((root / "image_query").iterdir())
    shutil.copy(src, root / "image_query" / "car_0001.jpg")
    with pytest.raises(ValueError, match=r"car_0001\.jpg"):
        read_veri776(root)
    (root / "image_query" / "car_0001.jpg").unlink()
    shutil.rmtree(root / "image_test")
    with pytest.raises(ValueError, match="missing folder image_test/"):
        read_veri776(root)


def test_build_reid_dataset(generated):
    root, _ = generated["veri776"]
    assert build_reid_dataset("veri776", root).train == read_veri776(root).train
    msmt_root, truth = generated["msmt17_v1"]
    ds = build_reid_dataset("msmt17", msmt_root, combine_train_val=True)
    assert len(ds.train) == truth["counts"]["train"] + truth["counts"]["val"]
    with pytest.raises(ValueError, match="market1501, msmt17, veri776"):
        build_reid_dataset("duke", root)


def test_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        read_market1501(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a folder"):
        read_msmt17(tmp_path / "nowhere")


# --------------------------------------------------------------------------- torch view

def test_image_dataset_items_and_loader(generated):
    root, truth = generated["market1501"]
    ds = read_market1501(root)
    view = ReIDImageDataset(ds.train, ds.root)
    assert len(view) == len(ds.train)
    assert view.labels.dtype == np.int64 and view.labels.tolist() == [r.pid for r in ds.train]
    assert view.sample_ids == [r.relpath for r in ds.train]
    assert view.num_classes == ds.num_train_pids
    image, pid, camid, i = view[7]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 16)
    assert (pid, camid, i) == (ds.train[7].pid, ds.train[7].camid, 7)
    images, pids, camids, idx = next(iter(DataLoader(view, batch_size=5, shuffle=False)))
    assert images.shape == (5, 3, 32, 16) and idx.tolist() == [0, 1, 2, 3, 4]

    resized = ReIDImageDataset(ds.gallery, ds.root,
                               transform=lambda im: im.resize((8, 16)))
    assert resized[0][0].shape == (3, 16, 8)
    assert resized.num_classes == max(r.pid for r in ds.gallery) + 1


def test_image_dataset_refuses_bad_records(generated, tmp_path):
    root, _ = generated["market1501"]
    with pytest.raises(ValueError, match="non-negative"):
        ReIDImageDataset([("a.jpg", -1, 0)], root)
    view = ReIDImageDataset([("../outside.jpg", 1, 0)], root)
    with pytest.raises(ValueError, match="outside the dataset root"):
        view[0]


# --------------------------------------------------------------------------- export

def test_export_list_round_trip(generated, tmp_path):
    root, _ = generated["msmt17_v1"]
    ds = read_msmt17(root)
    out = tmp_path / "list_train.txt"
    export_list(ds.train, out, relative_to="train")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ds.train)
    # Same format as MSMT17's own list, relative to the image folder.
    original = (root / "MSMT17_V1" / "list_train.txt").read_text(encoding="utf-8").splitlines()
    assert [ln.split()[0] for ln in lines] == [ln.split()[0] for ln in original]
    assert [int(ln.split()[1]) for ln in lines] == [r.pid for r in ds.train]

    export_list([ReIDRecord("query/0001_c1s1_000001_01.jpg", 1, 0)], out)
    assert out.read_text(encoding="utf-8") == "query/0001_c1s1_000001_01.jpg 1\n"
    with pytest.raises(ValueError, match="whitespace"):
        export_list([("a b.jpg", 1, 0)], out)
    with pytest.raises(ValueError, match="not under 'train'"):
        export_list([("test/a.jpg", 1, 0)], out, relative_to="train")


# --------------------------------------------------------------------------- generator

def test_generator_truth_and_noise(generated):
    root, truth = generated["market1501"]
    assert json.loads((root / TRUTH_FILE).read_text(encoding="utf-8")) == truth
    n_train = truth["counts"]["train"]
    assert len(truth["mislabelled"]) == math.floor(0.2 * n_train + 0.5)
    ds = read_market1501(root)
    train_paths = {r.relpath: r for r in ds.train}
    inverse = {label: pid for pid, label in ds.pid_map.items()}
    for wrong in truth["mislabelled"]:
        record = train_paths[wrong["relpath"]]
        assert inverse[record.pid] == wrong["given_pid"] != wrong["true_pid"]
        assert wrong["true_pid"] in truth["train_ids"]


def test_generated_mislabelled_images_depict_their_true_identity(generated):
    """Nearest identity centroid (mean colour of its clean images) is the true identity."""
    root, truth = generated["veri776"]
    ds = read_veri776(root)
    wrong = {w["relpath"]: w["true_pid"] for w in truth["mislabelled"]}
    inverse = {label: pid for pid, label in ds.pid_map.items()}

    def pixels(r):
        return np.asarray(Image.open(ds.root / r.relpath), dtype=np.float64).ravel()

    clean = [r for r in ds.train if r.relpath not in wrong]
    centroids = {pid: np.mean([pixels(r) for r in clean if inverse[r.pid] == pid], axis=0)
                 for pid in truth["train_ids"]}
    for r in ds.train:
        if r.relpath in wrong:
            x = pixels(r)
            nearest = min(centroids, key=lambda pid: np.sum((centroids[pid] - x) ** 2))
            assert nearest == wrong[r.relpath]


def test_generator_is_deterministic_and_png(tmp_path):
    a = make_synthetic_reid(tmp_path / "a", "market1501", seed=5, image_format="png")
    b = make_synthetic_reid(tmp_path / "b", "market1501", seed=5, image_format="png")
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a" / "bounding_box_test").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "bounding_box_test").iterdir())
    assert all(n.endswith(".png") for n in names)
    one = names[0]
    assert ((tmp_path / "a" / "bounding_box_test" / one).read_bytes()
            == (tmp_path / "b" / "bounding_box_test" / one).read_bytes())


def test_hardness_spreads_the_images_of_an_identity(tmp_path):
    def spread(hardness):
        """Mean distance of the training images to their identity's mean image, and between identity means."""
        make_synthetic_reid(tmp_path / str(hardness), "market1501", n_ids=12, images_per_id=10, noise_rate=0.0,
                            hardness=hardness, seed=4, image_format="png")
        ds = read_market1501(tmp_path / str(hardness))
        images = {}
        for r in ds.train:
            images.setdefault(r.pid, []).append(np.asarray(Image.open(ds.root / r.relpath), np.float64).ravel())
        means = {pid: np.mean(x, axis=0) for pid, x in images.items()}
        within = np.mean([np.linalg.norm(x - means[pid]) for pid, xs in images.items() for x in xs])
        centre = np.mean(list(means.values()), axis=0)
        between = np.mean([np.linalg.norm(m - centre) for m in means.values()])
        return within, between

    easy, hard = spread(0.0), spread(0.8)
    assert hard[0] > 2 * easy[0]  # images of one identity differ more
    assert hard[0] / hard[1] > 2 * easy[0] / easy[1]  # relative to how far apart identities are


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "duke"}, "valid layouts"),
    ({"n_ids": 1}, "n_ids"),
    ({"images_per_id": 1}, "images_per_id"),
    ({"noise_rate": 1.5}, "noise_rate"),
    ({"n_cams": 10}, "1-digit camera"),
    ({"size": (2, 8)}, "size"),
    ({"image_format": "bmp"}, "image_format"),
    ({"hardness": 1.5}, "hardness"),
    ({"hardness": -0.1}, "hardness"),
])
def test_generator_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"layout": "market1501", **kwargs}
    layout = args.pop("layout")
    with pytest.raises(ValueError, match=message):
        make_synthetic_reid(tmp_path, layout, **args)
