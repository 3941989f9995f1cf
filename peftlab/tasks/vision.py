"""Image classification: Fashion-MNIST (local IDX files), scikit-learn's digits, and the SPSFT paper's
hub data sets (CIFAR-100, Tiny-ImageNet, Caltech101) for users with a network.

Preprocessing in plain torch (torchvision cannot run next to the CPU torch here): to [0, 1], grey
images repeated to 3 channels, resize (antialiased bilinear) to ``resize`` x ``resize`` and center-crop
to ``image_size`` (the paper: 256 -> 224), or resize straight to ``image_size`` when ``resize`` is null;
then normalise with the task's mean/std, or the model's when those are null. ``image_size: null``
takes the model's resolution.
"""

from __future__ import annotations

import gzip
import logging
import struct
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from peftlab import checks
from peftlab.errors import ConfigError
from peftlab.models.vision import ImageSpec
from peftlab.registry import TASKS
from peftlab.tasks.base import ClassificationTask, HeldOutConfig, TaskConfig
from peftlab.tasks.data_root import find_data_file, load_hub_dataset


@dataclass
class ImageConfig(TaskConfig):
    """``conf/task`` keys of the image tasks (null: the model's resolution / normalisation)."""

    image_size: int | None = None
    resize: int | None = None
    mean: Any = None  # three numbers
    std: Any | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("task.image_size", self.image_size, minimum=1, optional=True)
        checks.integer("task.resize", self.resize, minimum=1, optional=True)
        checks.numbers("task.mean", self.mean, 3, optional=True)
        checks.numbers("task.std", self.std, 3, above=0, optional=True)


@dataclass
class HeldOutImageConfig(ImageConfig, HeldOutConfig):
    """Image tasks that hold out every ``eval_every_nth`` image of one set (digits)."""


@dataclass
class SplitImageConfig(ImageConfig):
    """Hub image sets without a validation split: a seeded ``train_fraction`` of train is trained on."""

    train_fraction: float = 0.75
    split_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.number("task.train_fraction", self.train_fraction, above=0, below=1)
        checks.integer("task.split_seed", self.split_seed)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageExample:
    image: np.ndarray  # uint8, (H, W) grey or (H, W, 3) RGB
    label: int


class ImageTransform:
    """uint8 image -> normalised float tensor (3, size, size)."""

    def __init__(self, size: int, resize: int | None, mean, std) -> None:
        if resize is not None and resize < size:
            raise ConfigError(f"task.resize={resize} is smaller than the crop size {size}")
        self.size, self.resize = size, resize
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.tensor(image, dtype=torch.float32).div_(255)
        x = x[None].expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)[:3]
        side = self.resize or self.size
        if x.shape[1:] != (side, side):
            x = F.interpolate(x[None], size=(side, side), mode="bilinear", antialias=True)[0]
        if side != self.size:
            top = (side - self.size) // 2
            x = x[:, top : top + self.size, top : top + self.size]
        return (x - self.mean) / self.std


class ImageDataset(Dataset):
    def __init__(self, examples: list[ImageExample], transform: ImageTransform) -> None:
        self.examples, self.transform = examples, transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.examples[index]
        return self.transform(example.image), example.label


def collate_images(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([image for image, _ in items]),
        "labels": torch.tensor([label for _, label in items], dtype=torch.long),
    }


class ImageClassificationTask(ClassificationTask):
    model_head = "image"
    config_class = ImageConfig
    metrics = ("accuracy",)
    main_metric = "accuracy"
    eval_splits = ("validation",)

    def build_loader(self, examples, tokenizer, batch_size, max_length, generator=None):
        """``tokenizer`` is the model's ``ImageSpec`` for image models; ``max_length`` is unused."""
        spec: ImageSpec = tokenizer
        cfg = self.cfg
        size = cfg.image_size or spec.size
        transform = ImageTransform(size, cfg.resize, cfg.mean or spec.mean, cfg.std or spec.std)
        return DataLoader(
            ImageDataset(examples, transform),
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            collate_fn=collate_images,
        )

    def load_split(self, split: str) -> list[ImageExample]:
        if split not in ("train", *self.eval_splits):
            allowed = ", ".join(("train", *self.eval_splits))
            raise ConfigError(f"task {self.cfg.name} has no split {split!r}; allowed: {allowed}")
        return self.limit(self.read_split(split), split)

    @abstractmethod
    def read_split(self, split: str) -> list[ImageExample]:
        """Every example of ``split``."""


# -- Fashion-MNIST ---------------------------------------------------------------------------------------
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "validation": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain): unsigned-byte arrays of any rank, checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file (bad magic number {data[:4]!r})")
    rank = data[3]
    shape = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: header says shape {shape}, file holds {body.size} values")
    return body.reshape(shape)


@TASKS.register("fashion_mnist")
class FashionMnist(ImageClassificationTask):
    num_labels = 10

    def read_split(self, split: str) -> list[ImageExample]:
        arrays = []
        for name in FASHION_FILES[split]:
            path, tried = find_data_file(self.data_root, f"fashion_mnist/{name}")
            if path is None:
                raise ConfigError(
                    f"Fashion-MNIST: no file at {', '.join(map(str, tried))}; set data_root=DIR (a folder "
                    "holding fashion_mnist/) or PEFTLAB_DATA_ROOT"
                )
            arrays.append(read_idx(path))
        images, labels = arrays
        if len(images) != len(labels) or labels.max() >= self.num_labels:
            raise ConfigError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
        log.info("fashion_mnist %s: %d images", split, len(images))
        return [ImageExample(image, int(label)) for image, label in zip(images, labels, strict=True)]


# -- scikit-learn digits ---------------------------------------------------------------------------------
@TASKS.register("digits")
class Digits(ImageClassificationTask):
    """1797 8x8 grey digits shipped by scikit-learn; every ``eval_every_nth`` image is held out."""

    num_labels = 10
    config_class = HeldOutImageConfig

    def read_split(self, split: str) -> list[ImageExample]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images * (255 / 16)).round().astype(np.uint8)  # values 0..16 -> 0..255
        pairs = self.held_out(list(zip(images, digits.target, strict=True)), split)
        return [ImageExample(image, int(label)) for image, label in pairs]


# -- hub data sets (SPSFT paper, Appendix C) ---------------------------------------------------------------
@dataclass(frozen=True)
class HubImageSpec:
    name: str
    dataset: str
    image_key: str
    label_key: str
    num_labels: int
    train_split: str
    eval_split: str | None  # None: hold out ``1 - train_fraction`` of the training split


HUB_IMAGE_TASKS = (
    HubImageSpec("cifar100", "uoft-cs/cifar100", "img", "fine_label", 100, "train", "test"),
    HubImageSpec("tiny_imagenet", "zh-plus/tiny-imagenet", "image", "label", 200, "train", "valid"),
    HubImageSpec("caltech101", "flwrlabs/caltech101", "image", "label", 101, "train", None),
)


class HubImageTask(ImageClassificationTask):
    spec: HubImageSpec

    def __init__(self, cfg, data_root):
        super().__init__(cfg, data_root)
        self.num_labels = self.spec.num_labels

    def read_split(self, split: str) -> list[ImageExample]:
        spec = self.spec
        hub_split = spec.eval_split if split != "train" and spec.eval_split else spec.train_split
        rows = load_hub_dataset(
            spec.dataset,
            None,
            hub_split,
            f"task {spec.name} reads the hub (it needs a network or a filled HF cache)",
            "image tasks that run offline: fashion_mnist, digits",
        )
        if spec.eval_split is None:  # the paper's 75/25 split, fixed by the task's split_seed
            order = np.random.default_rng(int(self.cfg.split_seed)).permutation(len(rows))
            cut = int(float(self.cfg.train_fraction) * len(rows))
            rows = rows.select(order[:cut] if split == "train" else order[cut:])
        key, label = spec.image_key, spec.label_key
        return [ImageExample(np.asarray(row[key].convert("RGB")), int(row[label])) for row in rows]


for _spec in HUB_IMAGE_TASKS:
    _config = ImageConfig if _spec.eval_split else SplitImageConfig
    TASKS.register(_spec.name)(
        type(f"Hub_{_spec.name}", (HubImageTask,), {"spec": _spec, "config_class": _config})
    )
