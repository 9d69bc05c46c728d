"""byol_bench.classification: datasets by name, the B §3.2 transforms, the AlexNet lighting op."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from byol_bench import classification as cls
from byol_bench.datasets import DatasetError


def test_lighting_matches_the_alexnet_formula_written_out():
    img = torch.rand(3, 5, 4)
    alpha = torch.tensor([0.05, -0.12, 0.3])
    out = cls.Lighting(0.1)(img, alpha=alpha)
    v, lam = cls.LIGHTING_EIGVEC, cls.LIGHTING_EIGVAL
    for c in range(3):
        # Krizhevsky et al. 2012: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, p_j the eigenvectors (columns)
        shift = sum(v[c][j] * float(alpha[j]) * lam[j] for j in range(3))
        torch.testing.assert_close(out[c], img[c] + shift)


def test_lighting_draws_alpha_with_alphastd():
    torch.manual_seed(0)
    op = cls.Lighting(0.1)
    shifts = torch.stack([op(torch.zeros(3, 1, 1)).flatten() for _ in range(4000)])
    alphas = torch.linalg.solve(op.eigvec * op.eigval, shifts.T).T  # eigvec @ diag(eigval) @ alpha = shift
    assert abs(float(alphas.std()) - 0.1) < 0.005
    assert torch.equal(cls.Lighting(0.0)(torch.ones(3, 2, 2)), torch.ones(3, 2, 2))


@pytest.mark.parametrize("name", cls.DATASETS)
def test_transform_output_shapes(name):
    image = Image.new("RGB", (150, 90), (120, 30, 200))
    assert cls.train_transform(name, 64)(image).shape == (3, 64, 64)
    assert cls.train_transform(name, 224)(image).shape == (3, 224, 224)
    out = cls.test_transform(cls.resize_for(64), 64)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert cls.resize_for(224) == 256 and cls.resize_for(64) == 73


def test_imagenet_train_pipeline_has_the_reference_steps():
    names = [type(t).__name__ for t in cls.train_transform("imagenet").transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor", "Lighting",
                     "Normalize"]
    jitter = cls.train_transform("imagenet").transforms[2]
    assert jitter.brightness == (0.6, 1.4) and jitter.hue is None
    places = [type(t).__name__ for t in cls.train_transform("places205").transforms]
    assert places[:4] == ["Resize", "CenterCrop", "RandomCrop", "RandomHorizontalFlip"]


@pytest.mark.parametrize(("name", "classes"), [("imagenet", 10), ("inat18", 12), ("places205", 10)])
def test_splits_open_on_the_tiny_data(tiny_data, name, classes, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)  # a relative data root, as the demo passes it (data/tiny)
    train = cls.open_split(name, tiny_data.name, "train", cls.test_transform(73, 64), tiny=True)
    val = cls.open_split(name, tiny_data, "val", tiny=True)
    assert train.num_classes == val.num_classes == classes
    image, label = train.dataset[0]
    assert image.shape == (3, 64, 64) and 0 <= label < classes
    assert set(val.dataset.targets) == set(range(classes))


def test_real_class_count_is_checked(tiny_data):
    with pytest.raises(DatasetError, match=r"has 10 classes here, expected 1000 \(use a tiny preset"):
        cls.open_split("imagenet", tiny_data, "val")
    with pytest.raises(ValueError, match="not one of imagenet, inat18, places205"):
        cls.open_split("cifar", tiny_data, "val")
