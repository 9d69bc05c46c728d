"""The VOC07 SVM features see the reference's pixels: PIL decode and PIL resizes (issue 11 item 9).

mmselfsup v0.5.0 (PROTOCOLS.md B §2.2) loads ``PIL.Image.open(path).convert("RGB")`` and applies torchvision's
``Resize(256)``, ``Resize((224, 224))``, ``ToTensor``, ``Normalize`` to the PIL image. The runner's default path must
give the same features within float tolerance; the opt-in tensor path must not pass for the reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms

from benchmarks.voc07_svm.runner import PRESET_DIR, Voc07SvmConfig, voc07_datasets
from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD, MultiLayerFeatures, build_resnet
from byol_bench.config import load_config
from byol_bench.features import extract_features, squash_transform

LAYERS = ("feat1", "feat5")
N_IMAGES = 6  # per split: forward passes at 224 px are the slow part on 2 cores


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18").eval()


def _cfg(data, *extra: str) -> Voc07SvmConfig:
    return load_config(Voc07SvmConfig, "tiny", [f"data_root={data}", *extra], preset_dir=PRESET_DIR)


def _reference(model: torch.nn.Module, paths: list) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Plain PIL + torchvision (v1) transforms, as the reference pipeline, and the same pooled features."""
    pipeline = transforms.Compose([transforms.Resize(256), transforms.Resize((224, 224)), transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    images = torch.stack([pipeline(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        out = MultiLayerFeatures(model, LAYERS).eval()(images)
    return images, {name: out[name].numpy() for name in LAYERS}


def _runner_features(model: torch.nn.Module, cfg: Voc07SvmConfig, split: str) -> tuple[list, torch.Tensor, dict]:
    splits, _ = voc07_datasets(cfg)  # exactly the datasets (decoding and transform) that run() extracts from
    data = splits[split]
    keep = list(range(N_IMAGES))
    images = torch.stack([data[i][0] for i in keep])
    feats = extract_features(model, Subset(data, keep), LAYERS, batch_size=N_IMAGES, num_workers=0,
                             device=torch.device("cpu"), cache_dir=None, key="", desc=split)
    return [data.image_path(i) for i in keep], images, feats


def _max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_default_path_equals_plain_pil_and_torchvision(model, tiny_data, split):
    cfg = _cfg(tiny_data)
    assert cfg.preprocess == "pil"
    paths, images, feats = _runner_features(model, cfg, split)
    ref_images, ref_feats = _reference(model, paths)
    # Same pixels up to float rounding (ToTensor vs ToDtype(scale=True)); one uint8 level would be 0.017 here.
    torch.testing.assert_close(images, ref_images, rtol=0, atol=1e-5)
    for name in LAYERS:
        assert _max_rel(feats[name], ref_feats[name]) < 1e-5, name


def test_tensor_path_is_opt_in_and_not_the_reference(model, tiny_data):
    cfg = _cfg(tiny_data, "preprocess=tensor")
    splits, desc = voc07_datasets(cfg)
    assert desc.startswith("tensor-") and splits["test"].image_format == "tensor"
    paths, images, feats = _runner_features(model, cfg, "test")
    ref_images, ref_feats = _reference(model, paths)
    # Close (off by about one uint8 level in places) but not the reference's pixels: the check above would fail.
    assert 1e-3 < float((images - ref_images).abs().max()) < 0.1
    assert 1e-5 < _max_rel(feats["feat5"], ref_feats["feat5"]) < 1e-2


def test_paths_have_distinct_names_and_the_pil_path_refuses_tensors():
    (pil, pil_desc), (_, tensor_desc) = squash_transform(), squash_transform(preprocess="tensor")
    assert pil_desc != tensor_desc and pil_desc.startswith("pil-")  # feature-cache keys of the paths never mix
    with pytest.raises(TypeError, match="needs a PIL image"):
        pil(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="preprocess"):
        squash_transform(preprocess="gpu")
