"""Datasets (Fashion-MNIST, CIFAR-10/100, STL-10, ImageFolder) and a resumable sampler.

Images are kept as uint8 tensors where the dataset fits in memory, so the
augmentations run on tensors. Every sample's augmentation is seeded by
(seed, epoch, index): a resumed run sees exactly the crops an uninterrupted
run would have seen.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from sslzoo.config import DataConfig
from sslzoo.errors import UserError

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DataInfo:
    """What the model and the augmentations need to know about a dataset."""

    channels: int
    image_size: int  # native side length; eval crops use it
    resize: int  # eval: resize to this, then centre-crop image_size
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Dataset statistics (per-channel mean/std of the training images).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INFO = {
    "fmnist": DataInfo(1, 28, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": DataInfo(3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DataInfo(3, 32, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DataInfo(3, 96, 96, 10, *IMAGENET_STATS),
    "imagefolder": DataInfo(3, 224, 256, 1000, *IMAGENET_STATS),
    "synthetic": DataInfo(3, 224, 256, 1000, *IMAGENET_STATS),  # ImageNet-shaped noise
}


class TensorImages(Dataset):
    """In-memory uint8 images (N, C, H, W) with integer labels."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


# --------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) IDX file, the MNIST family's format."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise UserError(
            f"{path} is corrupt ({err}); reinstall it: apt-get install --reinstall dataset-fashion-mnist"
        ) from None


def find_fmnist(root: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw", FMNIST_SYSTEM_DIR):
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def load_fmnist(cfg: DataConfig, split: str) -> TensorImages:
    found = find_fmnist(Path(cfg.root), split)
    if found is None:
        if not cfg.download:
            raise UserError(
                f"Fashion-MNIST not found in {cfg.root} or {FMNIST_SYSTEM_DIR}: "
                "apt-get install dataset-fashion-mnist, or set data.download=true"
            )
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(cfg.root, train=split == "train", download=True)
        except Exception as err:  # noqa: BLE001 - any download failure is a user-facing data problem
            raise UserError(
                f"Fashion-MNIST is not installed and could not be downloaded into {cfg.root} ({err}); "
                "apt-get install dataset-fashion-mnist"
            ) from None
        found = find_fmnist(Path(cfg.root), split)
        assert found is not None
    images, labels = (read_idx(p) for p in found)
    if len(images) != len(labels) or len(images) == 0:
        raise UserError(f"{found[0]} and {found[1]} disagree or are empty; reinstall dataset-fashion-mnist")
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------- torchvision datasets


def load_torchvision(cfg: DataConfig, split: str) -> TensorImages:
    import torchvision

    root = Path(cfg.root)
    try:
        if cfg.name in ("cifar10", "cifar100"):
            cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
            ds = cls(str(root), train=split == "train", download=cfg.download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.tensor(ds.targets)
        else:  # stl10: the unlabeled split is for pre-training; train/test for evaluation
            stl_split = {"pretrain": "unlabeled", "train": "train", "test": "test"}[split]
            ds = torchvision.datasets.STL10(str(root), split=stl_split, download=cfg.download)
            images = torch.from_numpy(ds.data)
            labels = torch.from_numpy(ds.labels.astype(np.int64))
    except RuntimeError as err:
        raise UserError(
            f"{cfg.name} not found or corrupt under {root} ({err}); "
            "put the torchvision files there or set data.download=true"
        ) from None
    if len(images) == 0:
        raise UserError(f"{cfg.name} under {root} is empty")
    return TensorImages(images, labels)


class SafeImageFolder(Dataset):
    """ImageFolder whose unreadable files are skipped and counted (or raise, by option)."""

    def __init__(self, root: Path, on_corrupt: str) -> None:
        import torchvision

        try:
            self.folder = torchvision.datasets.ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as err:
            raise UserError(
                f"no images in {root} ({err}); expected class folders of images (ImageNet layout)"
            ) from None
        self.on_corrupt = on_corrupt
        self.corrupt: set[int] = set()

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        for offset in range(len(self.folder)):
            i = (index + offset) % len(self.folder)
            path, label = self.folder.samples[i]
            try:
                with Image.open(path) as image:
                    return image.convert("RGB"), label
            except (OSError, SyntaxError, ValueError) as err:
                if self.on_corrupt == "error":
                    raise UserError(f"corrupt image {path} ({err}); remove it or set data.on_corrupt=skip") from None
                if i not in self.corrupt:
                    self.corrupt.add(i)
                    warnings.warn(f"skipping corrupt image {path} ({len(self.corrupt)} skipped so far)", stacklevel=2)
        raise UserError(f"every image under the dataset folder is corrupt (e.g. {self.folder.samples[index][0]})")


def load_imagefolder(cfg: DataConfig, split: str) -> SafeImageFolder:
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(f"data.root={root} is not a folder; point it at an ImageNet-style folder (train/CLASS/*.JPEG)")
    sub = {"pretrain": "train", "train": "train", "test": "val"}[split]
    folder = root / sub if (root / sub).is_dir() else root
    return SafeImageFolder(folder, cfg.on_corrupt)


class SyntheticImages(Dataset):
    """ImageNet-sized random uint8 images (``data.name=synthetic``): throughput runs need no dataset.

    Image ``i`` is drawn from a generator seeded by ``i``, so it never changes. The
    images are already tensors: JPEG decoding, part of a real ImageNet loader's work, is left out.
    """

    LENGTH = {"pretrain": 1_281_167, "train": 1_281_167, "test": 50_000}  # ImageNet-1k's train and val sizes

    def __init__(self, split: str) -> None:
        info = INFO["synthetic"]
        self.split, self.shape = split, (info.channels, info.resize, info.resize)
        self.num_classes = info.num_classes

    def __len__(self) -> int:
        return self.LENGTH[self.split]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        seed = index if self.split != "test" else self.LENGTH["pretrain"] + index
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, self.shape, generator=generator, dtype=torch.uint8), index % self.num_classes


LOADERS: dict[str, Callable[[DataConfig, str], Dataset]] = {
    "fmnist": lambda cfg, split: load_fmnist(cfg, "test" if split == "test" else "train"),
    "cifar10": load_torchvision,
    "cifar100": load_torchvision,
    "stl10": load_torchvision,
    "imagefolder": load_imagefolder,
    "synthetic": lambda cfg, split: SyntheticImages(split),
}


def load_dataset(cfg: DataConfig, split: str) -> Dataset:
    """``split`` is ``pretrain`` (what SSL trains on), ``train`` or ``test`` (labelled, for evaluation)."""
    return LOADERS[cfg.name](cfg, split)


def data_info(cfg: DataConfig) -> DataInfo:
    return INFO[cfg.name]


# --------------------------------------------------------------------------- sampling


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one view, folded into the 64 bits ``torch.Generator.manual_seed`` takes: no seed that
    worked before changes (their values were under 2**64); from seed ~184,466 on the product overflowed."""
    return ((seed * 1_000_003 + epoch) * 100_000_007 + index) % 2**64


class SeededViews(Dataset):
    """Applies ``transform.seeded(image, seed)`` to ``base[index]`` with the seed the sampler drew."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[Tensor], int]:
        index, seed = key
        image, label = self.base[index]
        return self.transform.seeded(image, seed), label


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled, rank-sharded indices that can start mid-epoch.

    Yields ``(index, augmentation seed)``. The order depends only on
    (seed, epoch), so a resumed run continues the same sequence.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        for index in mine[self.start_batch * self.batch_size :].tolist():
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
