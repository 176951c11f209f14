"""MNIST and Omniglot-28 as grey-value tensors in [0, 1], dynamic binarisation and minibatches.

A dataset is a dict of float32 tensors {"train", "valid", "test"} shaped [n, 784] plus a "source"
string saying exactly which data it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write

MNIST_VALID = 400  # last training images held out, as in Burda et al.
OMNIGLOT_VALID = 1345  # held out of the shuffled training images, as in Burda et al.
OMNIGLOT_TRAIN_DRAWERS = range(1, 16)  # drawers 1-15 train, 16-20 test


class DataNotFoundError(FileNotFoundError):
    """The data folder lacks the files a dataset needs (the message names folder and layout)."""


class DataCorruptError(RuntimeError):
    """Files are present but cannot be read as the dataset."""


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument, else $IWAE_DATA_DIR, else the user's cache folder."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("IWAE_DATA_DIR"):
        return Path(os.environ["IWAE_DATA_DIR"]).expanduser()
    return cache_dir() / "data"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iwae_core"


def binarize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Each pixel ~ Bernoulli(grey value); with a seed the result is reproducible."""
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=gen)


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True) -> dict:
    if name == "mnist":
        return load_mnist(root, download)
    if name == "omniglot":
        return load_omniglot(root)
    raise ValueError(f"unknown dataset {name!r}; choose mnist or omniglot")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_LAYOUT = f"MNIST/raw/{{{', '.join(MNIST_FILES)}}} (torchvision's layout)"


def locate(name: str, root: str | os.PathLike | None = None) -> tuple[bool, Path]:
    """Whether a dataset's files are under root, without reading them, and where they are (or would be)."""
    root = data_root(root)
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        return all((raw / n).exists() for n in MNIST_FILES), raw
    if name == "omniglot":
        mat = next((m for m in _chardata_paths(root) if m.exists()), None)
        if mat is not None:
            return True, mat
        return all(f.is_dir() for f in _omniglot_folders(root)), root / "omniglot-py"
    raise ValueError(f"unknown dataset {name!r}; choose from ['mnist', 'omniglot']")


def load_mnist(root: str | os.PathLike | None = None, download: bool = True) -> dict:
    """MNIST from torchvision's layout ROOT/MNIST/raw; downloads there when missing and online."""
    from torchvision.datasets import MNIST

    root = data_root(root)
    raw = root / "MNIST" / "raw"
    if not locate("mnist", root)[0]:
        if not download:
            raise DataNotFoundError(f"MNIST not found in {root}; expected {MNIST_LAYOUT}")
        try:
            MNIST(str(root), train=True, download=True)
        except Exception as err:
            raise DataNotFoundError(
                f"MNIST not found in {root} and the download failed ({err}); expected {MNIST_LAYOUT}. "
                "Set IWAE_DATA_DIR or --data-dir to a folder holding it.") from err
    for name in MNIST_FILES:
        check_idx_file(raw / name, dims=3 if "images" in name else 1)
    try:
        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
    except Exception as err:  # torchvision's reader asserts with no message: name the exception at least
        raise DataCorruptError(f"MNIST files in {raw} cannot be read: {str(err) or type(err).__name__}") from err
    for part, n in ((train, 60000), (test, 10000)):
        if tuple(part.data.shape) != (n, 28, 28) or len(part.targets) != n:
            raise DataCorruptError(
                f"MNIST in {root / 'MNIST' / 'raw'} has images {tuple(part.data.shape)}, expected ({n}, 28, 28)")
    x_train = train.data.reshape(-1, 784).float() / 255
    x_test = test.data.reshape(-1, 784).float() / 255
    return {
        "train": x_train[:-MNIST_VALID], "valid": x_train[-MNIST_VALID:], "test": x_test,
        "train_labels": train.targets[:-MNIST_VALID], "valid_labels": train.targets[-MNIST_VALID:],
        "test_labels": test.targets, "source": "MNIST (LeCun), 59,600 train / 400 valid / 10,000 test",
    }


def check_idx_file(path: Path, dims: int) -> None:
    """An IDX file of unsigned bytes (MNIST's format): magic 0x0000080D for D dimensions, D big-endian
    sizes, then exactly their product in bytes. Names the file and what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
    if len(header) < 4 + 4 * dims:
        raise DataCorruptError(f"{path} cannot be read: it is {size} bytes, too short for an IDX header")
    magic = int.from_bytes(header[:4], "big")
    if magic != 0x800 + dims:
        raise DataCorruptError(f"{path} cannot be read: it starts with 0x{magic:08x}, not the IDX magic number "
                               f"0x{0x800 + dims:08x} of a {dims}-d byte array (not an uncompressed MNIST file)")
    shape = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    expected = len(header) + int(np.prod(shape, dtype=np.int64))
    if size != expected:
        raise DataCorruptError(f"{path} cannot be read: it is {size} bytes, its header announces {shape}, "
                               f"which take {expected}")


OMNIGLOT_LAYOUT = ("chardata.mat (Burda et al.) or omniglot-py/images_{background,evaluation}/"
                   "<Alphabet>/characterNN/*.png (torchvision's layout)")


def _chardata_paths(root: Path) -> list[Path]:
    return [root / "chardata.mat", root / "omniglot" / "chardata.mat", root / "OMNIGLOT" / "chardata.mat"]


def _omniglot_folders(root: Path) -> list[Path]:
    return [root / "omniglot-py" / f"images_{s}" for s in ("background", "evaluation")]


def load_omniglot(root: str | os.PathLike | None = None) -> dict:
    """Omniglot-28: Burda's chardata.mat when present, else built from the original 105x105 images."""
    root = data_root(root)
    for mat in _chardata_paths(root):
        if mat.exists():
            return _load_chardata(mat)
    folders = _omniglot_folders(root)
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise DataNotFoundError(
            f"Omniglot not found in {root}: missing {', '.join(missing)}; expected {OMNIGLOT_LAYOUT}. "
            "Set IWAE_DATA_DIR or --data-dir to a folder holding it.")
    images, drawers = _omniglot28_cached(folders)
    x = torch.from_numpy(images.reshape(-1, 784).astype(np.float32) / 255)
    is_train = torch.from_numpy(np.isin(drawers, list(OMNIGLOT_TRAIN_DRAWERS)))
    x_train, x_test = x[is_train], x[~is_train]
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(123))
    x_train = x_train[perm]
    return {
        "train": x_train[:-OMNIGLOT_VALID], "valid": x_train[-OMNIGLOT_VALID:], "test": x_test,
        "source": (f"Omniglot-28 rebuilt from the original 105x105 images (area-downsampled; drawers 1-15 "
                   f"train, 16-20 test): {len(x_train) - OMNIGLOT_VALID:,} train / {OMNIGLOT_VALID:,} valid / "
                   f"{len(x_test):,} test; not the paper's chardata.mat"),
    }


def _load_chardata(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        train, test = mat["data"].T, mat["testdata"].T
    except Exception as err:
        raise DataCorruptError(f"{path} cannot be read as Burda's chardata.mat: {err}") from err
    # Columns are 28x28 images in MATLAB (column-major) order; make them row-major.
    to_rows = lambda a: torch.from_numpy(  # noqa: E731
        np.ascontiguousarray(a.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784)).astype(np.float32))
    train, test = to_rows(train), to_rows(test)
    perm = np.random.RandomState(123).permutation(len(train))
    train = train[torch.from_numpy(perm)]
    return {"train": train[:-OMNIGLOT_VALID], "valid": train[-OMNIGLOT_VALID:], "test": test,
            "source": f"Omniglot chardata.mat (Burda et al.): {len(train):,} train / {len(test):,} test"}


def _omniglot28_cached(folders: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """All images area-downsampled to 28x28 uint8 (ink = 255) and their drawer numbers, cached as .npz."""
    files = sorted(p for f in folders for p in f.glob("*/character*/*.png"))
    if not files:
        raise DataNotFoundError(f"no PNG images under {folders[0].parent}; expected {OMNIGLOT_LAYOUT}")
    key = hashlib.sha256("\n".join(f"{p.relative_to(folders[0].parent)}:{p.stat().st_size}"
                                   for p in files).encode()).hexdigest()[:16]
    cache = cache_dir() / f"omniglot28-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return z["images"], z["drawers"]
        except Exception:
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt from the images
    from PIL import Image
    from tqdm import tqdm

    images = np.empty((len(files), 28, 28), dtype=np.uint8)
    drawers = np.empty(len(files), dtype=np.int64)
    for i, path in enumerate(tqdm(files, desc="Omniglot 105->28", unit="img", disable=None)):
        try:
            with Image.open(path) as img:
                grey = img.convert("L")
        except Exception as err:
            raise DataCorruptError(f"cannot read Omniglot image {path}: {err}") from err
        if grey.size != (105, 105):
            raise DataCorruptError(f"Omniglot image {path} is {grey.size}, expected 105x105")
        small = np.asarray(grey.resize((28, 28), Image.Resampling.BOX), dtype=np.float32)
        images[i] = np.rint(255 - small).astype(np.uint8)  # ink = 0 in the originals: invert
        drawers[i] = int(path.stem.split("_")[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    # atomic_write's temporary file is this process's own: two processes building the cache at once (a study's
    # workers) each rename a complete file over it, and neither finds the other's temporary file gone
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: savez_compressed would add .npz to a name
            np.savez_compressed(f, images=images, drawers=drawers)
    atomic_write(cache, write)
    return images, drawers


class Batches:
    """Shuffled minibatches of a tensor, dynamically binarised; its state allows exact resumption."""

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.x, self.batch_size = x, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x) // self.batch_size  # the ragged last batch is dropped

    def epoch(self, start: int = 0, perm: torch.Tensor | None = None):
        """Yield (index, perm, binarised batch) for one epoch, from batch `start` of `perm`."""
        if perm is None:
            perm = torch.randperm(len(self.x), generator=self.generator)
        for i in range(start, len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            yield i, perm, torch.bernoulli(self.x[idx], generator=self.generator)
