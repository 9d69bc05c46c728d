"""BYOL's two asymmetric augmentation pipelines (PROTOCOLS.md B §1.7), split for speed.

| Step | View 1 | View 2 |
|---|---|---|
| RandomResizedCrop (bicubic, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip p=0.5 | worker | worker |
| ColorJitter(0.4, 0.4, 0.2, 0.1) in random order, p=0.8 | device | device |
| RandomGrayscale p=0.2 | device | device |
| Gaussian blur σ ~ U(0.1, 2.0) | p=1.0 | p=0.1 |
| Solarize (threshold 128) | p=0.0 | p=0.2 |
| Normalize (ImageNet mean/std, RGB) | device | device |

Every random draw of one sample comes from torchvision's own parameter samplers (``RandomResizedCrop.get_params``,
``ColorJitter.get_params``) run under a per-sample seed, so the distributions are the reference's by construction
and a sample's augmentation depends only on ``(seed, epoch, position)``, never on worker count or resumption.

Workers decode, crop and flip with PIL (exactly torchvision's ``resized_crop`` on PIL) and ship uint8 tensors of
a fixed size plus the drawn photometric parameters. The photometric ops then run batched with per-sample
parameters (:func:`photometric`; each op touches only the rows that draw it): on the GPU when training on CUDA,
and in the DataLoader workers when training on CPU (``pretrain.data.CollateViews``).

NOTE: two deliberate differences from mmselfsup's PIL ops, each worth about half a grey level on average
(``tests/test_pretrain_augment.py`` bounds the whole chain): intermediate results stay float where PIL truncates
to uint8 after every op, and the blur is a true Gaussian (radius ⌈3σ_max⌉, edge pixels extended like PIL) where
PIL approximates one with three box blurs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)
# ColorJitter's op indices, in torchvision's order (fn_idx of ColorJitter.get_params).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
# ITU-R 601-2 luma, as PIL's convert("L") that the reference pipeline uses.
LUMA = (0.299, 0.587, 0.114)
SOLARIZE_THRESHOLD = 128 / 255


@dataclass(frozen=True)
class PhotometricSpec:
    """The photometric half of one view's pipeline."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    @property
    def blur_radius(self) -> int:
        """Kernel half-width in pixels: 3σ of the widest Gaussian this view can draw."""
        return math.ceil(3 * self.blur_sigma[1])


VIEW1 = PhotometricSpec(blur_p=1.0, solarize_p=0.0)
VIEW2 = PhotometricSpec(blur_p=0.1, solarize_p=0.2)


# ---------------------------------------------------------------- worker side ---------------------------------


def draw_view(image: Image.Image, spec: PhotometricSpec, scale: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Draw one view's parameters from the global torch RNG, in the reference pipeline's order.

    Returns scalar/small tensors (collated into a batch by the DataLoader): ``crop`` (top, left, h, w), ``flip``,
    ``jitter``, ``order`` (a permutation of ``JITTER_OPS``), ``factors`` (brightness, contrast, saturation, hue),
    ``gray``, ``blur_sigma`` (0 when the view is not blurred) and ``solarize``.
    """
    crop = T.RandomResizedCrop.get_params(image, list(scale), list(CROP_RATIO))
    flip = torch.rand(1) < 0.5
    jitter = torch.rand(1) < spec.jitter_p
    order, b, c, s, h = T.ColorJitter.get_params(
        [max(0.0, 1 - spec.brightness), 1 + spec.brightness], [max(0.0, 1 - spec.contrast), 1 + spec.contrast],
        [max(0.0, 1 - spec.saturation), 1 + spec.saturation], [-spec.hue, spec.hue])
    gray = torch.rand(1) < spec.gray_p
    blur = torch.rand(1) < spec.blur_p
    sigma = torch.empty(1).uniform_(*spec.blur_sigma)
    solarize = torch.rand(1) < spec.solarize_p
    return {
        "crop": torch.tensor(crop, dtype=torch.int64),
        "flip": flip[0],
        "jitter": jitter[0],
        "order": order,
        "factors": torch.tensor([b, c, s, h], dtype=torch.float32),
        "gray": gray[0],
        "blur_sigma": torch.where(blur, sigma, torch.zeros(1))[0],
        "solarize": solarize[0],
    }


def crop_view(image: Image.Image, params: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Crop, resize (bicubic, PIL) and flip: the uint8 (3, size, size) tensor the reference would see."""
    top, left, height, width = params["crop"].tolist()
    view = TF.resized_crop(image, top, left, height, width, [size, size], T.InterpolationMode.BICUBIC)
    if params["flip"]:
        view = TF.hflip(view)
    return TF.pil_to_tensor(view)


def two_views(image: Image.Image, seed: int, size: int, scale: tuple[float, float],
              specs: tuple[PhotometricSpec, PhotometricSpec] = (VIEW1, VIEW2)) -> dict[str, Any]:
    """Both views of one image from its own seed: uint8 crops ``view1``/``view2`` and ``params1``/``params2``."""
    image = image.convert("RGB")
    with torch.random.fork_rng(devices=[]):  # never disturb the caller's RNG stream
        # Seed only the CPU generator: torch.manual_seed also queues CUDA seeding, which costs milliseconds.
        torch.default_generator.manual_seed(seed)
        params = [draw_view(image, spec, scale) for spec in specs]
    out: dict[str, Any] = {}
    for index, view_params in enumerate(params, start=1):
        out[f"view{index}"] = crop_view(image, view_params, size)
        out[f"params{index}"] = view_params
    return out


# ---------------------------------------------------------------- device side ---------------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma (Python-scalar weights: no host-to-device copy)."""
    return x[:, 0:1] * LUMA[0] + x[:, 1:2] * LUMA[1] + x[:, 2:3] * LUMA[2]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` clamped to [0, 1] (torchvision's ``_blend``), as one lerp."""
    return torch.lerp(other, x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black (PIL ``ImageEnhance.Brightness``)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (PIL ``ImageEnhance.Contrast``)."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's greyscale version (PIL ``ImageEnhance.Color``)."""
    return _blend(x, _gray(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns, keeping saturation and value (torchvision ``adjust_hue``)."""
    r, g, b = x.unbind(1)  # contiguous planes: elementwise ops on them vectorise better than reductions over dim 1
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1 / torch.where(chroma > 0, chroma, 1.0)
    # Hue in sixths of a turn; where two channels tie for the maximum both formulas give the same value.
    sixths = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2, (r - g) * inv + 4))
    sixths = torch.remainder(sixths + 6 * shift.view(-1, 1, 1), 6.0)
    # HSV -> RGB without branches: channel n in (R, G, B) = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = sixths + n
        k = torch.where(k >= 6, k - 6, k)
        channels.append(maxc - chroma * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(channels, dim=1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma replicated to three channels (``RandomGrayscale`` on an RGB image)."""
    return _gray(x).expand(-1, 3, -1, -1).contiguous()


def blur_matrices(sigma: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """(N, size, size) banded matrices B such that ``B @ column`` is a 1-D Gaussian blur of each column.

    Tap ``k`` of row ``i`` reads pixel ``clamp(i + k - radius, 0, size - 1)``: edge pixels are repeated, as PIL
    does, so the weights of taps beyond the border fold onto the edge pixel.
    """
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-offsets.square() / (2 * sigma.view(-1, 1).square()))
    weights = weights / weights.sum(dim=1, keepdim=True)  # (N, K)
    rows = torch.arange(size, device=sigma.device)
    cols = (rows.view(-1, 1) + offsets.long().view(1, -1)).clamp_(0, size - 1)  # (size, K)
    out = torch.zeros(sigma.shape[0], size, size, device=sigma.device, dtype=sigma.dtype)
    index = cols.unsqueeze(0).expand(sigma.shape[0], -1, -1)
    return out.scatter_add_(2, index, weights.unsqueeze(1).expand(-1, size, -1).contiguous())


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (σ in output pixels), edges extended as PIL does.

    Written as two batched matrix products ``B_h @ X @ B_wᵀ`` (one kernel per image cannot share a convolution
    weight): as fast as a grouped convolution on CPU and faster on GPU.
    """
    height, width = x.shape[-2:]
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    vertical = blur_matrices(sigma, height, radius).unsqueeze(1)
    horizontal = vertical if width == height else blur_matrices(sigma, width, radius).unsqueeze(1)
    return vertical @ x @ horizontal.transpose(-1, -2)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """``v -> v if v < 128 else 255 - v`` (mmselfsup ``Solarization``), on [0, 1] values."""
    return torch.where(x >= SOLARIZE_THRESHOLD, 1 - x, x)


_JITTER_FNS = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
               "hue": adjust_hue}


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without waiting for queued device work (pinned, non-blocking)."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _apply_rows(x: torch.Tensor, rows: torch.Tensor, fn: Callable[..., torch.Tensor],
                *args: torch.Tensor) -> torch.Tensor:
    """``x[rows] = fn(x[rows], *args[rows])`` in place; ``rows`` is a CPU index tensor, so no device sync."""
    if rows.numel() == 0:
        return x
    args = tuple(_to_device(a[rows], x.device) for a in args)
    if rows.numel() == x.shape[0]:
        return fn(x, *args)
    index = _to_device(rows, x.device)
    return x.index_copy_(0, index, fn(x.index_select(0, index), *args))


def photometric(images: torch.Tensor, params: dict[str, torch.Tensor], spec: PhotometricSpec,
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Apply one view's photometric ops to a batch and normalise.

    Args:
        images: uint8 (N, 3, H, W) on the training device.
        params: that view's batched parameters from :func:`draw_view`, on the CPU.
        spec: the view's spec (only its blur radius is read; probabilities were applied when drawing).
        mean: (1, 3, 1, 1) float tensor on the device, in [0, 1] units.
        std: same shape as ``mean``.

    Returns:
        float32 (N, 3, H, W), normalised.
    """
    x = images.float().div_(255)
    jitter, order, factors = params["jitter"], params["order"], params["factors"]
    for position in range(len(JITTER_OPS)):
        for op_index, name in enumerate(JITTER_OPS):
            rows = torch.nonzero(jitter & (order[:, position] == op_index)).squeeze(1)
            x = _apply_rows(x, rows, _JITTER_FNS[name], factors[:, op_index])
    x = _apply_rows(x, torch.nonzero(params["gray"]).squeeze(1), grayscale)
    sigma = params["blur_sigma"]
    x = _apply_rows(x, torch.nonzero(sigma > 0).squeeze(1),
                    lambda v, s: gaussian_blur(v, s, spec.blur_radius), sigma)
    x = _apply_rows(x, torch.nonzero(params["solarize"]).squeeze(1), solarize)
    return x.sub_(mean).div_(std)


class BatchAugmenter:
    """Moves a collated two-view batch to the device and applies each view's photometric ops there.

    Args:
        device: the training device.
        channels_last: return the views in channels_last memory format (CUDA convolutions prefer it).
    """

    def __init__(self, device: torch.device, channels_last: bool) -> None:
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views, augmented and normalised on the device (float views arrive already augmented)."""
        views = []
        for index, spec in ((1, VIEW1), (2, VIEW2)):
            x = batch[f"view{index}"].to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = photometric(x, batch[f"params{index}"], spec, self.mean, self.std)
            views.append(x.contiguous(memory_format=self.memory_format))
        return views[0], views[1]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) on any device -> normalised float on the device (evaluation inputs)."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def eval_transform(image_size: int) -> T.Compose:
    """Resize the short side to ``image_size × 256/224`` (bicubic), centre-crop, uint8 tensor (kNN monitor)."""
    return T.Compose([
        T.Resize(round(image_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.PILToTensor(),
    ])
