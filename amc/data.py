"""Datasets held in memory as uint8 tensors, their train/search/test splits and batching.

Readers: the CIFAR-10/100 python layout (``cifar-10-batches-py`` / ``cifar-100-python``), a folder
of images with one subfolder per class (``folder``), the small real ``digits`` dataset that ships
inside the package (:func:`read_digits`, used by the demo; source and licence in
``amc/datasets/README.md``) and a seeded ``synthetic`` dataset for tests. Images are kept as
``uint8`` tensors of shape (N, C, H, W); normalisation ``(x / 255 - mean) / std`` is applied per
batch (or once, for evaluation tensors).

AMC evaluates candidate policies on a ``search`` split held out from the *training* set, never on
the test set: :func:`load_splits` sets a seeded *holdout* aside (never trained on); the search
split is its first ``search_images`` images; the rest of the training set is the trained-on part
(``train``), from which calibration images are drawn. See :class:`~amc.config.DataConfig`.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .config import DEFAULT_MEAN, DEFAULT_STD, DataConfig
from .errors import AmcError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

DIGITS_FILE = Path(__file__).with_name("datasets") / "digits.csv.gz"
DIGITS_TEST_IMAGES = 400  # the fixed test part carved out of the 1,797 digits (they have no official split)
DIGITS_TEST_SEED = 0  # seeds that carve; independent of DataConfig.split_seed (which splits the training part)


@dataclass
class ImageSet:
    """Images (uint8, N x C x H x W) with integer labels (N,) and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.float().div_(255) - mean) / std


def normalization(cfg: DataConfig) -> Normalization:
    """The normalisation of ``cfg`` (mean, std)."""
    return Normalization(tuple(cfg.mean), tuple(cfg.std))


# ---------------------------------------------------------------- readers
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise AmcError(f"CIFAR file missing: {path}") from None
    except Exception as exc:
        raise AmcError(f"cannot read CIFAR file {path}: {exc}") from None


def _find_dir(data_dir: str | None, inner: str, marker: str) -> Path:
    if not data_dir:
        raise AmcError("this dataset needs --data-dir")
    root = Path(data_dir).expanduser()
    for candidate in (root, root / inner):
        if (candidate / marker).is_file():
            return candidate
    if not root.exists():
        raise AmcError(f"data directory not found: {root}")
    raise AmcError(f"{root} is not a {inner} folder (no '{marker}' in it or in {root / inner})")


def read_cifar(data_dir: str | None, split: str, num_classes: int = 10) -> ImageSet:
    """CIFAR-10/100 in the standard python layout; ``split`` is ``train`` or ``test``."""
    if num_classes == 10:
        folder = _find_dir(data_dir, "cifar-10-batches-py", "batches.meta")
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        folder = _find_dir(data_dir, "cifar-100-python", "meta")
        files = ["train"] if split == "train" else ["test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    parts = [_unpickle(folder / f) for f in files]
    data = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
    labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
    classes = list(_unpickle(folder / meta_file)[names_key])
    return ImageSet(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels), classes)


def read_image_folder(root: str | Path, image_size: int) -> ImageSet:
    """``root/<class>/<image>``; images converted to RGB and resized to ``image_size`` squared."""
    from PIL import Image  # noqa: PLC0415  (Pillow ships with matplotlib)

    root = Path(root)
    if not root.is_dir():
        raise AmcError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise AmcError(f"image folder {root} has no class subfolders")
    images, labels = [], []
    for idx, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(f).convert("RGB").resize((image_size, image_size))
            except Exception as exc:
                raise AmcError(f"cannot read image {f}: {exc}") from None
            images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()))
            labels.append(idx)
    if not images:
        raise AmcError(f"image folder {root} contains no images")
    return ImageSet(torch.stack(images), torch.tensor(labels), classes)


def read_digits(split: str, image_size: int = 16) -> ImageSet:
    """The bundled handwritten digits (UCI "Optical Recognition of Handwritten Digits", CC BY 4.0).

    1,797 grayscale 8x8 images with pixel counts 0..16, 10 classes. They become RGB uint8 images
    (0..16 scaled to 0..255, the gray value in all three channels) of ``image_size`` pixels squared
    (bilinear resampling). ``split``: ``test`` is a fixed part of :data:`DIGITS_TEST_IMAGES` images
    drawn by a permutation seeded with :data:`DIGITS_TEST_SEED`; ``train`` is the other 1,397
    images. Both keep the file's order.
    """
    if split not in ("train", "test"):
        raise AmcError(f"unknown split '{split}' of the digits (train or test)")
    try:
        with gzip.open(DIGITS_FILE, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except OSError as exc:
        raise AmcError(f"cannot read the bundled digits file {DIGITS_FILE}: {exc}") from None
    pixels = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8)).float() * (255.0 / 16.0)
    labels = torch.from_numpy(table[:, 64].copy())
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
    index = (perm[:DIGITS_TEST_IMAGES] if split == "test" else perm[DIGITS_TEST_IMAGES:]).sort().values
    images = pixels[index]
    if image_size != 8:
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(images, labels[index], [str(d) for d in range(10)])


def channel_statistics(data: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``data``'s pixels in [0, 1] (for :attr:`DataConfig.mean` / ``std``)."""
    x = data.images.float().div(255).transpose(0, 1).reshape(data.images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def synthetic_images(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> ImageSet:
    """Learnable synthetic images: each class is a smooth random colour pattern plus per-image noise.

    The class patterns depend only on ``num_classes`` and ``size`` (so train and test share them);
    ``seed`` draws the images.
    """
    pattern_gen = torch.Generator().manual_seed(12345 + num_classes)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=pattern_gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=gen)
    noise = torch.randn(n, 3, size, size, generator=gen) * 0.25
    shift = torch.randint(-3, 4, (n, 2), generator=gen)
    imgs = patterns[labels] + noise
    imgs = torch.stack([torch.roll(im, (int(s[0]), int(s[1])), dims=(1, 2)) for im, s in zip(imgs, shift)])
    return ImageSet((imgs.clamp(0, 1) * 255).to(torch.uint8), labels, [f"class{i}" for i in range(num_classes)])


def read_split(cfg: DataConfig, split: str, num_classes: int = 10, image_size: int = 32) -> ImageSet:
    """The raw ``train`` or ``test`` part of the configured dataset.

    ``num_classes`` / ``image_size``: of the synthetic dataset (and folder and digits images, unless
    ``cfg.image_size`` is set), normally the model's.
    """
    size = cfg.image_size or image_size
    if cfg.dataset in ("cifar10", "cifar100"):
        return read_cifar(cfg.data_dir, split, 10 if cfg.dataset == "cifar10" else 100)
    if cfg.dataset == "folder":
        if not cfg.data_dir:
            raise AmcError("dataset 'folder' needs --data-dir with train/ and test/ subfolders")
        return read_image_folder(Path(cfg.data_dir) / split, size)
    if cfg.dataset == "digits":
        return read_digits(split, size)
    if cfg.dataset == "synthetic":
        n = cfg.synthetic_size[0] if split == "train" else cfg.synthetic_size[1]
        return synthetic_images(n, num_classes, size, seed=0 if split == "train" else 1)
    raise AmcError(f"unknown dataset '{cfg.dataset}' (choose cifar10, cifar100, folder, digits or synthetic)")


def split_indices(n: int, holdout: int, search_images: int, seed: int) -> dict[str, torch.Tensor]:
    """Sorted index sets of ``range(n)``: ``train`` (trained on), ``holdout``, its first ``search_images``
    (``search``) and the rest of it (``holdout_rest``: held out, never scored by a search)."""
    if not 0 <= holdout < n:
        raise AmcError(f"a holdout of {holdout} images leaves no training images in a training set of {n} "
                       "(lower --holdout)")
    if not 0 <= search_images <= holdout:
        raise AmcError(f"the search split ({search_images} images) must be part of the holdout ({holdout} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {"train": perm[holdout:].sort().values, "holdout": perm[:holdout].sort().values,
            "search": perm[:search_images].sort().values, "holdout_rest": perm[search_images:holdout].sort().values}


def load_splits(cfg: DataConfig, splits: tuple[str, ...] = ("train", "search", "test"), *, num_classes: int = 10,
                image_size: int = 32) -> dict[str, ImageSet]:
    """The requested splits: ``train`` (trained-on part), ``holdout``, ``search`` and ``holdout_rest``
    (:func:`split_indices`) come from the training set, ``test`` from the test set. Labels must be below ``num_classes`` (the model's outputs)."""
    out: dict[str, ImageSet] = {}
    wanted = [s for s in splits if s in ("train", "holdout", "search", "holdout_rest")]
    if wanted:
        full = read_split(cfg, "train", num_classes, image_size)
        index = split_indices(len(full), cfg.holdout, cfg.search_images, cfg.split_seed)
        out.update({s: full.subset(index[s]) for s in wanted})
    if "test" in splits:
        out["test"] = read_split(cfg, "test", num_classes, image_size)
    for name, part in out.items():
        if len(part) and int(part.labels.max()) >= num_classes:
            raise AmcError(f"the {name} split has labels up to {int(part.labels.max())} but the model has "
                           f"{num_classes} outputs (wrong dataset, or set --num-classes)")
    return out


# ---------------------------------------------------------------- batching
def augment_cifar(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation on a uint8 batch: 4-pixel zero-pad random crop and horizontal flip."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    cropped = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    cropped[flip] = cropped[flip].flip(3)
    return cropped


def iterate_batches(data: ImageSet, batch_size: int, norm: Normalization, *, shuffle: bool = False,
                    augment: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (images, labels) batches; shuffling and augmentation are seeded."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen) if shuffle else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        images = data.images[idx]
        if augment:
            images = augment_cifar(images, gen)
        yield norm(images), data.labels[idx]
