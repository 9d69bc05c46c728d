"""Classification data shared by the linear probes (multi-head, AvgPool) and semi-supervised fine-tuning.

Three things, by dataset name (``imagenet``, ``inat18``, ``places205``):

- :func:`open_split`: a split of a dataset under ``--data-root`` in the layouts of docs/DATASETS.md, through the
  existing loaders (``ImageFolderList``, ``INat18``, ``Places205``), plus its number of classes;
- :func:`train_transform` / :func:`test_transform`: the augmentations of PROTOCOLS.md B §3.2 (mmselfsup v0.5.0
  ``_base_/datasets/{imagenet,inaturalist2018,places205}.py``), PIL image in, normalised float tensor out, so
  decoding and cropping run in the DataLoader workers;
- :class:`Lighting`: the AlexNet PCA colour noise of the ImageNet train pipeline.

``NUM_CLASSES`` holds the real datasets' class counts; the tiny data has fewer, and :func:`open_split` takes the
count from the data when ``tiny`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torchvision import transforms as T

from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD
from byol_bench.checkpoint import sha256_file
from byol_bench.datasets import DatasetError, imagenet
from byol_bench.datasets.imagenet import ImageFolderList
from byol_bench.datasets.images import LabelledImages
from byol_bench.datasets.inat18 import INat18
from byol_bench.datasets.places205 import Places205
from byol_bench.seeding import rng_for

DatasetName = Literal["imagenet", "inat18", "places205"]
DATASETS: tuple[str, ...] = ("imagenet", "inat18", "places205")
# Real class counts (B §3.2 num_classes).
NUM_CLASSES = {"imagenet": 1000, "inat18": 8142, "places205": 205}
# Folder under --data-root per dataset (docs/DATASETS.md).
DATA_DIRS = {"imagenet": "imagenet", "inat18": "inat18", "places205": "places205"}

# AlexNet PCA lighting constants: the eigenvalues / eigenvectors of the ImageNet RGB pixel covariance as published
# with fb.resnet.torch (datasets/imagenet.lua, `pca`) and copied by mmselfsup v0.5.0
# (mmselfsup/datasets/pipelines/transforms.py, class Lighting) and pycls; pixel values in [0, 1].
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


@dataclass
class Split:
    """An opened split: the dataset (``(image, label)`` items) and the number of classes of the task."""

    dataset: LabelledImages
    num_classes: int
    source: Path  # the folder or file the samples came from (for messages and the record)


def check_dataset(name: str) -> str:
    """Returns ``name`` if it is a known classification dataset, else raises ValueError listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not one of {', '.join(DATASETS)}")
    return name


def open_split(name: str, data_root: str | Path, split: str, transform=None, *, tiny: bool = False,
               image_format: str = "pil") -> Split:
    """Opens ``split`` ("train" or "val") of dataset ``name`` under ``data_root``.

    - ``imagenet``: ``imagenet/meta/<split>.txt`` when it exists (what mmselfsup's ``ImageList`` reads; paths
      relative to ``imagenet/<split>/``, labels checked against the wnid folders), else the class folders;
    - ``inat18``: ``inat18/<split>2018.json``;
    - ``places205``: ``places205/trainvalsplit_places205/<split>_places205.csv``.

    ``num_classes`` is ``NUM_CLASSES[name]`` for real data; with ``tiny`` it is taken from the data (the tiny sets
    have 10-12 classes). For real data a loader whose class count disagrees with ``NUM_CLASSES`` is an error.

    Raises:
        DatasetError: missing or malformed files (message names the file); ValueError: unknown dataset or split.
    """
    check_dataset(name)
    root = Path(data_root) / DATA_DIRS[name]
    if name == "imagenet":
        listed = (root / "meta" / f"{split}.txt").is_file()
        # The list is named relative to the dataset folder (ImageFolderList joins it to root; a relative data_root
        # joined twice would point nowhere).
        dataset: LabelledImages = ImageFolderList(root, split, transform,
                                                  list_file=f"meta/{split}.txt" if listed else None,
                                                  image_format=image_format)
        found, source = len(dataset.classes), (root / "meta" / f"{split}.txt" if listed else root / split)
    elif name == "inat18":
        dataset = INat18(root, split, transform, image_format=image_format)
        found, source = len(dataset.classes), dataset.json_file
    else:
        dataset = Places205(root, split, transform, num_classes=None if tiny else NUM_CLASSES[name],
                            image_format=image_format)
        found, source = dataset.num_classes, dataset.list_file
    num_classes = found if tiny else NUM_CLASSES[name]
    if not tiny and found != num_classes:
        raise DatasetError(f"{source}: {name} has {found} classes here, expected {num_classes} "
                           "(use a tiny preset for the embedded data, or check the data root)")
    return Split(dataset, num_classes, source)


class Lighting:
    """AlexNet-style PCA lighting noise (Krizhevsky et al. 2012, §4.1) on a float RGB tensor in [0, 1].

    Per image draw ``alpha ~ N(0, alphastd^2)`` (3 values) and add ``eigvec @ (alpha * eigval)`` to every pixel:
    ``img[c] += sum_j eigvec[c, j] * alpha[j] * eigval[j]``, as mmselfsup v0.5.0's ``Lighting`` does (no clamp).
    """

    def __init__(self, alphastd: float = 0.1, eigval=LIGHTING_EIGVAL, eigvec=LIGHTING_EIGVEC) -> None:
        self.alphastd = alphastd
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def __call__(self, img: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        if alpha is None:
            alpha = torch.normal(0.0, self.alphastd, size=(3,))
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.to(img.dtype).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd})"


def resize_for(size: int) -> int:
    """The test resize that keeps the protocol's 256/224 ratio for a crop of ``size`` (224 -> 256, 64 -> 73)."""
    return round(size * 256 / 224)


def _normalize() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(name: str, size: int = 224) -> T.Compose:
    """The B §3.2 train augmentation of dataset ``name`` at crop ``size`` (PIL image in, tensor out).

    - imagenet: RandomResizedCrop(size, bilinear, scale 0.08-1) -> HFlip -> ColorJitter(0.4, 0.4, 0.4, hue 0)
      -> ToTensor -> Lighting(0.1) -> Normalize;
    - inat18: RandomResizedCrop(size) -> HFlip -> ToTensor -> Normalize;
    - places205: Resize(r) -> CenterCrop(r) -> RandomCrop(size) -> HFlip -> ToTensor -> Normalize, with
      r = :func:`resize_for` (size) (256 at 224).
    """
    check_dataset(name)
    rrc = T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BILINEAR)
    if name == "imagenet":
        steps = [rrc, T.RandomHorizontalFlip(), T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0),
                 T.ToTensor(), Lighting(0.1), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    elif name == "inat18":
        steps = [rrc, T.RandomHorizontalFlip(), *_normalize()]
    else:
        big = resize_for(size)
        steps = [T.Resize(big), T.CenterCrop(big), T.RandomCrop(size), T.RandomHorizontalFlip(), *_normalize()]
    return T.Compose(steps)


def crop_flip_transform(size: int = 224) -> T.Compose:
    """The AvgPool probe's train augmentation on every dataset (B §3.3, the MoCo setting): RandomResizedCrop(size,
    bilinear, scale 0.08-1) -> HFlip -> ToTensor -> Normalize. No colour jitter or Lighting (unlike the multi-head
    ImageNet pipeline of :func:`train_transform`)."""
    rrc = T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BILINEAR)
    return T.Compose([rrc, T.RandomHorizontalFlip(), *_normalize()])


def test_transform(resize: int = 256, size: int = 224) -> T.Compose:
    """The B §3.2 test pipeline (all three datasets): Resize(short side ``resize``) -> CenterCrop(``size``)."""
    return T.Compose([T.Resize(resize), T.CenterCrop(size), *_normalize()])


test_transform.__test__ = False  # a test module importing it by name must not have pytest collect it


# ---------------------------------------------------------------- labelled ImageNet subsets (semi-supervised)


@dataclass
class SubsetInfo:
    """Where a labelled subset came from, for the record (PROTOCOLS.md A.5: "the record says which")."""

    kind: str  # "simclr_list" (file names + label map), "list" ('wnid/file label') or "generated" (seeded, balanced)
    given: str | None  # the user's list file, None when generated
    given_sha256: str | None
    label_map: str | None  # the label map a SimCLR list was read with
    images: int
    per_class_min: int
    per_class_max: int


def labelled_subset(data_root: str | Path, fraction: float, *, subset_list: str = "", label_map: str = "",
                    seed: int = 0, tiny: bool = False) -> tuple[list[tuple[str, int]], SubsetInfo]:
    """The labelled ImageNet subset as ``(wnid/file, label)`` samples (B §4, A.5), and where it came from.

    - ``subset_list`` a SimCLR ``1percent.txt`` / ``10percent.txt`` (one file name per line): each wnid's label from
      ``label_map`` (a ``wnid/file label`` list such as mmselfsup's ``meta/train_labeled.txt``);
    - ``subset_list`` a ``wnid/file label`` list (mmselfsup's ``meta/train_1percent.txt``): taken as it is;
    - no ``subset_list``: ``fraction`` of the train split, class-balanced, drawn with ``rng_for(seed, "subset")``.

    Relative paths are under ``<data_root>/imagenet``. Either way the subset must name existing files under
    ``train/``, each once, with every class present. Write it with ``imagenet.write_image_list`` and open it with
    :func:`open_subset`.

    Raises:
        DatasetError: one line naming the file at fault.
    """
    root = Path(data_root) / DATA_DIRS["imagenet"]
    train_dir = root / "train"
    classes = imagenet.find_classes(train_dir)
    given = (root / subset_list if not Path(subset_list).is_absolute() else Path(subset_list)) if subset_list else None
    map_file = None
    if given is None:
        full = open_split("imagenet", data_root, "train", tiny=tiny)
        samples = imagenet.balanced_subset(full.dataset.samples, len(classes), fraction, rng_for(seed, "subset"),
                                           full.source)
        kind = "generated"
    elif imagenet.is_simclr_list(given):
        if not label_map:
            raise DatasetError(f"{given}: a SimCLR list names files only; pass label_map=PATH (a 'wnid/file label' "
                               "list such as meta/train_labeled.txt) to give its labels")
        map_file = root / label_map if not Path(label_map).is_absolute() else Path(label_map)
        samples = imagenet.read_simclr_list(given, imagenet.read_label_map(map_file))
        kind = "simclr_list"
    else:
        samples = imagenet.read_image_list(given, len(classes))
        kind = "list"
    source = given or root / "train"
    imagenet.check_subset(samples, classes, train_dir, source)
    imagenet.check_list_against_folders(samples, classes, source)
    counts = [0] * len(classes)
    for _, label in samples:
        counts[label] += 1
    return samples, SubsetInfo(kind, str(given) if given else None, sha256_file(given) if given else None,
                               str(map_file) if map_file else None, len(samples), min(counts), max(counts))


def open_subset(data_root: str | Path, list_file: Path, transform=None, *, tiny: bool = False) -> Split:
    """A labelled subset list (from :func:`labelled_subset`), as the ImageNet train split restricted to it.

    Raises:
        DatasetError: as :func:`open_split` (wrong class count for real data, bad list).
    """
    root = Path(data_root) / DATA_DIRS["imagenet"]
    dataset = imagenet.ImageFolderList(root, "train", transform, list_file=list_file.resolve())
    num_classes = len(dataset.classes) if tiny else NUM_CLASSES["imagenet"]
    if not tiny and len(dataset.classes) != num_classes:
        raise DatasetError(f"{root / 'train'}: imagenet has {len(dataset.classes)} classes here, expected "
                           f"{num_classes} (use a tiny preset for the embedded data, or check the data root)")
    return Split(dataset, num_classes, list_file)
