"""Instance-dependent noise, and training on a labels file (human or home-made noisy labels)."""
import numpy as np
import pytest

from dprune.data import build_dataset, instance_dependent_noise
from dprune.train import TrainConfig
from dprune.train.loop import Trainer


def test_instance_noise_flips_exactly_towards_the_models_confusion_and_prefers_ambiguous_samples():
    rng = np.random.default_rng(0)
    N, K = 4000, 6
    y = rng.integers(0, K, N)
    probs = rng.dirichlet(np.full(K, 0.3), N)
    noisy, flipped = instance_dependent_noise(y, probs, 0.25, seed=3)
    assert flipped.sum() == 1000 and (noisy != y).sum() == 1000
    masked = probs.copy()
    masked[np.arange(N), y] = -1
    np.testing.assert_array_equal(noisy[flipped], masked.argmax(1)[flipped])
    ambiguity = 1 - probs[np.arange(N), y]
    assert ambiguity[flipped].mean() > ambiguity[~flipped].mean() + 0.05
    again = instance_dependent_noise(y, probs, 0.25, seed=3)
    np.testing.assert_array_equal(again[0], noisy)


@pytest.mark.parametrize("probs, message", [
    (np.full((3, 2), 0.5), "rows for 4 labels"),
    (np.full((4, 2), np.nan), "finite"),
    (np.full(4, 0.5), r"\[N, K\]"),
])
def test_instance_noise_validation(probs, message):
    with pytest.raises(ValueError, match=message):
        instance_dependent_noise(np.array([0, 1, 0, 1]), probs, 0.5, seed=0)


def test_training_on_a_labels_file_records_it_and_its_differences(tmp_path):
    clean = build_dataset("digits")[0].labels
    noisy = clean.copy()
    noisy[:50] = (noisy[:50] + 1) % 10
    np.save(tmp_path / "labels.npy", noisy)
    cfg = TrainConfig.of(out=str(tmp_path / "r"), epochs=1, batch_size=256, progress=False,
                      labels_file=str(tmp_path / "labels.npy"))
    Trainer(cfg).fit()
    from dprune.store import TrajectoryStore

    np.testing.assert_array_equal(TrajectoryStore.open(tmp_path / "r" / "trajectory").labels, noisy)
    with np.load(tmp_path / "r" / "label_noise.npz") as z:
        assert z["flipped"].sum() == 50 and (z["clean_labels"] == clean).all()
    np.save(tmp_path / "bad.npy", noisy[:-1])
    with pytest.raises(ValueError, match="expected N"):
        Trainer(TrainConfig.of(out=str(tmp_path / "b"), epochs=1, labels_file=str(tmp_path / "bad.npy")))
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainConfig.of(out="x", labels_file="l.npy", label_noise=0.1, noise_kind="symmetric")
