"""Data on the real files: shapes, split sizes, value ranges, label counts; clear errors for bad folders."""

import shutil

import numpy as np
import pytest
import torch

from iwae_core.data import Batches, DataCorruptError, DataNotFoundError, binarize, load_mnist, load_omniglot
from support import require_data

# Label counts of the original files (see the data folder's README).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(require_data("MNIST", "raw"), download=False)


def test_mnist_shapes_splits_and_ranges(mnist):
    assert mnist["train"].shape == (59600, 784) and mnist["valid"].shape == (400, 784)
    assert mnist["test"].shape == (10000, 784)
    for part in ("train", "valid", "test"):
        x = mnist[part]
        assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    mean = torch.cat([mnist["train"], mnist["valid"]]).mean().item()
    assert mean == pytest.approx(0.1307, abs=5e-4)  # the well-known MNIST pixel mean


def test_mnist_label_counts_and_order(mnist):
    train = torch.cat([mnist["train_labels"], mnist["valid_labels"]])
    assert torch.bincount(train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist["test_labels"]).tolist() == MNIST_TEST_COUNTS
    assert train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist["test_labels"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.slow
def test_omniglot28_splits_and_ranges():
    data = load_omniglot(require_data("omniglot-py"))
    assert len(data["train"]) + len(data["valid"]) == 24345 and len(data["valid"]) == 1345
    assert data["test"].shape == (8115, 784)
    x = data["test"]
    assert x.min() == 0 and x.max() == 1
    assert 0.05 < x.mean() < 0.15  # ink is the minority, so the images were inverted
    border = x.reshape(-1, 28, 28)[:, [0, -1]].mean()
    assert border < x.mean()  # characters sit in the middle, not at the edges
    assert "not the paper's chardata.mat" in data["source"]


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path)) as err:
        load_mnist(tmp_path, download=False)
    assert "MNIST/raw" in str(err.value)
    with pytest.raises(DataNotFoundError, match="omniglot-py"):
        load_omniglot(tmp_path)


def test_corrupt_mnist_gives_a_clear_error(tmp_path):
    src = require_data("MNIST", "raw") / "MNIST" / "raw"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(src / name, raw / name)
    (raw / "train-images-idx3-ubyte").write_bytes((src / "train-images-idx3-ubyte").read_bytes()[:5000])
    with pytest.raises(DataCorruptError, match="cannot be read"):
        load_mnist(tmp_path, download=False)


def test_corrupt_omniglot_image_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for part in ("background", "evaluation"):
        folder = tmp_path / "omniglot-py" / f"images_{part}" / "Alphabet" / "character01"
        folder.mkdir(parents=True)
        (folder / "0001_01.png").write_bytes(b"not a png")
    with pytest.raises(DataCorruptError, match="0001_01.png"):
        load_omniglot(tmp_path)


def test_binarize_is_reproducible_with_a_seed_and_bernoulli_in_distribution():
    x = torch.full((2000, 50), 0.3)
    assert torch.equal(binarize(x, seed=5), binarize(x, seed=5))
    assert not torch.equal(binarize(x, seed=5), binarize(x, seed=6))
    assert binarize(x, seed=1).mean().item() == pytest.approx(0.3, abs=4 * (0.21 / 100000) ** 0.5)
    assert set(binarize(x).unique().tolist()) <= {0.0, 1.0}


def test_batches_cover_the_data_once_per_epoch_with_fresh_binarisation():
    x = torch.rand(103, 6)
    b = Batches(x, batch_size=10, seed=0)
    seen = [idx for _, perm, _ in b.epoch() for idx in [perm]]
    perm = seen[0]
    assert len(b) == 10 and sorted(perm.tolist()) == list(range(103))
    first = [xb for _, _, xb in Batches(x, 10, seed=0).epoch()]
    again = [xb for _, _, xb in Batches(x, 10, seed=0).epoch()]
    assert all(torch.equal(a, c) for a, c in zip(first, again, strict=True))  # same seed, same stream


def test_chardata_mat_is_preferred_and_read_column_major(tmp_path):
    """A small file in the layout of Burda et al.'s chardata.mat: 784 x n, one MATLAB column-major image each."""
    from scipy.io import savemat

    from iwae_core.data import OMNIGLOT_VALID

    rng = np.random.default_rng(0)
    images = rng.random((OMNIGLOT_VALID + 20, 28, 28)).astype(np.float32)
    test = rng.random((7, 28, 28)).astype(np.float32)
    def to_cols(a):  # column j = image j flattened in MATLAB (column-major) order
        return a.transpose(0, 2, 1).reshape(len(a), -1).T

    savemat(tmp_path / "chardata.mat", {"data": to_cols(images), "testdata": to_cols(test)})
    data = load_omniglot(tmp_path)
    assert data["test"].shape == (7, 784) and "chardata.mat" in data["source"]
    assert torch.allclose(data["test"], torch.from_numpy(test.reshape(7, 784)))  # row-major again
    train = torch.cat([data["train"], data["valid"]])
    assert len(data["valid"]) == OMNIGLOT_VALID and len(train) == len(images)
    rows = {tuple(r[:5].tolist()) for r in train}  # the same images, shuffled
    assert rows == {tuple(r[:5].tolist()) for r in torch.from_numpy(images.reshape(-1, 784))}


def test_two_processes_building_the_omniglot_cache_at_once_both_succeed(tmp_path, monkeypatch):
    """A study's workers load Omniglot at the same moment: each writes its own temporary file and renames it over
    the cache. Simulated by a second build that runs, start to finish, while the first is writing."""
    import iwae_core.data as data

    src = require_data("omniglot-py") / "omniglot-py"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folders = []
    for part in ("images_background", "images_evaluation"):
        character = next((src / part).glob("*/character*"))
        dest = tmp_path / "omniglot-py" / part / character.parent.name / character.name
        dest.mkdir(parents=True)
        for png in sorted(character.glob("*.png"))[:3]:
            shutil.copy(png, dest / png.name)
        folders.append(tmp_path / "omniglot-py" / part)
    save, other = np.savez_compressed, {}

    def save_while_another_builds(path, **arrays):
        save(path, **arrays)
        if "started" not in other:
            other["started"] = True
            other["images"] = data._omniglot28_cached(folders)[0]  # the other process, done before this one renames
    monkeypatch.setattr(data.np, "savez_compressed", save_while_another_builds)
    images, drawers = data._omniglot28_cached(folders)
    assert images.shape == (6, 28, 28) and np.array_equal(images, other["images"])
    left = [p.name for p in (tmp_path / "cache" / "iwae_core").iterdir()]
    assert len(left) == 1 and left[0].startswith("omniglot28-") and left[0].endswith(".npz")  # no temporary files
