"""Tests of dprune.models: shapes on tiny inputs, stems, and safe loading of local weights."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dprune.data import IndexedDataset, build_dataset
from dprune.models import MODEL_NAMES, SmallCNN, build_model, load_weights


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: on a small shared CPU, intra-op threads mostly wait on each
    # other (measured 50x slower with 2 threads than with 1 when the other core is busy).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32)])
def test_forward_shapes(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_resnet_stems():
    small = build_model("resnet18", 10, in_channels=1, image_size=32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.in_channels == 1 and isinstance(small.maxpool, nn.Identity)
    large = build_model("resnet18", 10, in_channels=1, image_size=64)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert large.conv1.in_channels == 1 and isinstance(large.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert large.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="vit", num_classes=3), "valid names: resnet18, resnet50, small_cnn"),
    (dict(name="small_cnn", num_classes=0), "num_classes must be a positive int, got 0"),
    (dict(name="resnet18", num_classes=3, in_channels=2.0), "in_channels must be a positive int"),
    (dict(name="resnet18", num_classes=3, image_size=True), "image_size must be a positive int"),
])
def test_build_model_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_weights_round_trip(tmp_path, name):
    torch.manual_seed(1)
    source = build_model(name, 5, in_channels=1, image_size=8)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_model(name, 5, in_channels=1, weights=path, image_size=8)
    assert _same_weights(source, loaded)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_weights_from_checkpoint_dict_with_ddp_prefix(tmp_path):
    source = SmallCNN(1, 4)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {}}, tmp_path / "ckpt.pt")
    target = SmallCNN(1, 4)
    load_weights(target, tmp_path / "ckpt.pt")
    assert _same_weights(source, target)


def test_classifier_of_another_size_is_skipped_with_a_warning(tmp_path):
    torch.manual_seed(3)
    source = build_model("resnet18", 10, image_size=32)
    torch.save(source.state_dict(), tmp_path / "w10.pt")
    with pytest.warns(UserWarning, match=r"fc\.weight \(10, 512\) in the file vs \(4, 512\)"):
        target = build_model("resnet18", 4, weights=tmp_path / "w10.pt", image_size=32)
    own, src = target.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in own if not k.startswith("fc."))
    assert own["fc.weight"].shape == (4, 512)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save(build_model("resnet18", 3, image_size=32).state_dict(), tmp_path / "rgb.pt")
    shapes = r"conv1\.weight: file \(64, 3, 3, 3\) vs model \(64, 1, 3, 3\)"
    with pytest.raises(ValueError, match=shapes):
        build_model("resnet18", 3, in_channels=1, weights=tmp_path / "rgb.pt", image_size=32)
    with pytest.raises(ValueError, match="missing key.*unexpected key"):
        build_model("small_cnn", 3, weights=tmp_path / "rgb.pt")


class _Mkdir:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_hostile_weights_file_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _Mkdir(str(marker))}, path)
    with pytest.raises(ValueError, match="refusing to load weights") as info:
        build_model("small_cnn", 3, weights=path)
    assert "posix.mkdir" in str(info.value)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_unreadable_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_model("small_cnn", 3, weights=tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        build_model("small_cnn", 3, weights=tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        build_model("small_cnn", 3, weights=tmp_path / "list.pt")


def test_safetensors_weights(tmp_path):
    path = tmp_path / "w.safetensors"
    source = SmallCNN(1, 3)
    if importlib.util.find_spec("safetensors") is None:
        path.write_bytes(b"\0" * 16)
        with pytest.raises(ValueError, match="safetensors package is not installed"):
            load_weights(SmallCNN(1, 3), path)
        return
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(path))
    target = SmallCNN(1, 3)
    load_weights(target, path)
    assert _same_weights(source, target)


def test_small_cnn_learns_digits():
    torch.manual_seed(0)
    train, _ = build_dataset("digits")
    loader = DataLoader(IndexedDataset(train), batch_size=64, shuffle=True)
    model = build_model("small_cnn", train.num_classes, train.in_channels, image_size=8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(2):
        for x, y, _i in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
