"""The two view pipelines: same distributions as the reference (B §1.7), same output for fixed parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F2
from PIL import Image, ImageFilter

from pretrain import augment as A

SCALE = (0.08, 1.0)
N_DRAWS = 4000
PIL_OPS = {"brightness": F2.adjust_brightness, "contrast": F2.adjust_contrast,
           "saturation": F2.adjust_saturation, "hue": F2.adjust_hue}


def random_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth colour blobs plus noise: every op has something to act on.
    base = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, size=(size[1], size[0], 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def batch_of(params: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([p[k] for p in params]) for k in params[0]}


@pytest.fixture(scope="module")
def draws() -> dict[str, dict[str, torch.Tensor]]:
    image = random_image(0)
    out = {}
    for name, spec in (("view1", A.VIEW1), ("view2", A.VIEW2)):
        torch.manual_seed(0)
        out[name] = batch_of([A.draw_view(image, spec, SCALE) for _ in range(N_DRAWS)])
    return out


def rate(flags: torch.Tensor) -> float:
    return flags.float().mean().item()


@pytest.mark.parametrize(("view", "blur_p", "solarize_p"), [("view1", 1.0, 0.0), ("view2", 0.1, 0.2)])
def test_application_rates(draws: dict, view: str, blur_p: float, solarize_p: float) -> None:
    p = draws[view]
    tol = 4 * np.sqrt(0.25 / N_DRAWS)  # 4 binomial standard deviations at worst (p = 0.5)
    assert rate(p["flip"]) == pytest.approx(0.5, abs=tol)
    assert rate(p["jitter"]) == pytest.approx(0.8, abs=tol)
    assert rate(p["gray"]) == pytest.approx(0.2, abs=tol)
    assert rate(p["blur_sigma"] > 0) == pytest.approx(blur_p, abs=tol)
    assert rate(p["solarize"]) == pytest.approx(solarize_p, abs=tol)
    if blur_p == 1.0:
        assert bool((p["blur_sigma"] > 0).all())
    if solarize_p == 0.0:
        assert not bool(p["solarize"].any())


def test_parameter_ranges(draws: dict) -> None:
    p = draws["view1"]
    lo, hi = p["factors"].min(dim=0).values, p["factors"].max(dim=0).values
    for i, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert low <= lo[i] < low + 0.01 and high - 0.01 < hi[i] <= high
    sigma = p["blur_sigma"]
    assert 0.1 <= sigma.min() < 0.11 and 1.99 < sigma.max() <= 2.0
    # The four jitter ops appear at each position equally often (a uniform random order).
    for position in range(4):
        counts = torch.bincount(p["order"][:, position], minlength=4).float() / N_DRAWS
        assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)
    # Crops: area fraction within the scale range (up to rounding), aspect ratio within 3/4..4/3.
    top, left, h, w = p["crop"].unbind(1)
    area = (h * w).float() / (40 * 48)
    assert area.min() > 0.06 and area.max() <= 1.0
    ratio = w.float() / h.float()
    assert ratio.min() > 0.6 and ratio.max() < 1.6
    assert bool(((top + h) <= 40).all() and ((left + w) <= 48).all())


def test_crop_and_flip_equal_torchvision_for_the_same_seed() -> None:
    image = random_image(1)
    reference = T.Compose([T.RandomResizedCrop(32, scale=SCALE, interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), T.PILToTensor()])
    for seed in range(20):
        torch.manual_seed(seed)
        expected = reference(image)
        assert torch.equal(A.two_views(image, seed, 32, SCALE)["view1"], expected)


def test_views_depend_only_on_the_seed() -> None:
    image = random_image(2)
    state = torch.get_rng_state()
    first, again = A.two_views(image, 123, 24, SCALE), A.two_views(image, 123, 24, SCALE)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert torch.equal(first["view1"], again["view1"]) and torch.equal(first["view2"], again["view2"])
    other = A.two_views(image, 124, 24, SCALE)
    assert not torch.equal(first["view1"], other["view1"])


@pytest.mark.parametrize("name", A.JITTER_OPS)
def test_jitter_ops_equal_torchvision_per_sample(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    x[0] = x[0, :1]  # a grey image: hue must leave it unchanged
    factors = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 0.9]) if name != "hue" else \
        torch.tensor([-0.1, -0.05, 0.0, 0.03, 0.1, 0.5])
    out = A._JITTER_FNS[name](x.clone(), factors)
    expected = torch.stack([PIL_OPS[name](x[i], factors[i].item()) for i in range(6)])
    # torchvision's tensor grey uses 0.2989 for red where PIL (the reference) uses 0.299: differences <= 1e-4.
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)


def test_grayscale_blur_solarize_for_fixed_parameters() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 3, 20, 20)
    gray = A.grayscale(x)
    torch.testing.assert_close(gray, F2.rgb_to_grayscale(x, num_output_channels=3), atol=2e-4, rtol=0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    sigma = torch.tensor([0.1, 1.0, 2.0])
    blurred = A.gaussian_blur(x, sigma, radius=6).double()
    for i, s in enumerate(sigma.tolist()):  # float64 reference: explicit kernel, edge pixels extended
        offsets = torch.arange(-6, 7, dtype=torch.float64)
        k = torch.exp(-offsets**2 / (2 * s * s))
        k = k / k.sum()
        padded = torch.nn.functional.pad(x[i:i + 1].double(), (6, 6, 6, 6), mode="replicate")
        ref = torch.nn.functional.conv2d(padded, (k[:, None] * k[None, :]).expand(3, 1, 13, 13), groups=3)
        torch.testing.assert_close(blurred[i], ref[0], atol=1e-5, rtol=0)
    values = torch.tensor([0, 127, 128, 255], dtype=torch.float32) / 255
    assert torch.equal((A.solarize(values) * 255).round(), torch.tensor([0.0, 127.0, 127.0, 0.0]))


def test_full_chain_matches_the_pil_reference_within_rounding() -> None:
    """mmselfsup applies the same ops to uint8 PIL images; PIL truncates to uint8 after each op (≈ -0.5 grey
    level per op) and approximates the blur with box filters, so agreement is to a couple of grey levels."""
    torch.manual_seed(0)
    pil_ops = {"brightness": F2.adjust_brightness, "contrast": F2.adjust_contrast,
               "saturation": F2.adjust_saturation, "hue": F2.adjust_hue}
    errors = []
    for seed in range(12):
        image = random_image(seed, (40, 40))
        params = A.draw_view(image, A.VIEW2, SCALE)
        params["jitter"] = torch.tensor(True)
        params["solarize"] = torch.tensor(seed % 2 == 0)
        params["gray"] = torch.tensor(seed % 4 == 0)
        params["blur_sigma"] = torch.tensor([0.0, 0.5, 1.2, 2.0][seed % 4])
        ref = image
        for op_index in params["order"].tolist():
            ref = pil_ops[A.JITTER_OPS[op_index]](ref, params["factors"][op_index].item())
        if params["gray"]:
            ref = F2.rgb_to_grayscale(ref, num_output_channels=3)
        if params["blur_sigma"] > 0:
            ref = ref.filter(ImageFilter.GaussianBlur(radius=params["blur_sigma"].item()))
        if params["solarize"]:
            arr = np.asarray(ref)
            ref = Image.fromarray(np.where(arr < 128, arr, 255 - arr).astype(np.uint8))
        out = A.photometric(F2.pil_to_tensor(image)[None], batch_of([params]), A.VIEW2,
                            torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), 1 / 255))[0]
        errors.append((out - F2.pil_to_tensor(ref).float()).abs().mean().item())
    assert max(errors) < 3.0, errors


def test_batched_output_applies_grayscale_at_the_drawn_rate() -> None:
    image = random_image(3, (32, 32))
    samples = [A.two_views(image, seed, 16, SCALE) for seed in range(600)]
    batch = {"view2": torch.stack([s["view2"] for s in samples]),
             "params2": batch_of([s["params2"] for s in samples])}
    out = A.photometric(batch["view2"], batch["params2"], A.VIEW2, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    is_gray = (out[:, 0] == out[:, 1]).flatten(1).all(dim=1) & (out[:, 1] == out[:, 2]).flatten(1).all(dim=1)
    assert torch.equal(is_gray, batch["params2"]["gray"])
    assert rate(is_gray) == pytest.approx(0.2, abs=0.07)
    assert out.min() >= 0 and out.max() <= 1


def test_batch_augmenter_shapes_and_normalisation() -> None:
    image = random_image(4, (32, 32))
    samples = [A.two_views(image, seed, 16, SCALE) for seed in range(4)]
    batch = {f"view{i}": torch.stack([s[f"view{i}"] for s in samples]) for i in (1, 2)}
    batch.update({f"params{i}": batch_of([s[f"params{i}"] for s in samples]) for i in (1, 2)})
    v1, v2 = A.BatchAugmenter(torch.device("cpu"), channels_last=False)(batch)
    assert v1.shape == v2.shape == (4, 3, 16, 16) and v1.dtype == torch.float32
    assert torch.isfinite(v1).all() and v1.min() > -2.2 and v1.max() < 2.7  # ImageNet-normalised [0, 1] range


def _reference_view(view: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One image through B §1.7's photometric steps, op by op, with torchvision's per-image functions.

    Returns the result in [0, 1] (not normalised) and a mask of the pixels that are not within 2e-4 of the
    solariser's threshold (where rounding differences may legitimately flip the branch).
    """
    x = view.float() / 255
    if params["jitter"]:
        for op_index in params["order"].tolist():
            x = PIL_OPS[A.JITTER_OPS[op_index]](x, params["factors"][op_index].item())
    if params["gray"]:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)  # PIL's convert("L") weights
    sigma = params["blur_sigma"].item()
    if sigma > 0:  # 13 taps: 3 sigma of the widest Gaussian (2.0); edge pixels extended
        taps = torch.exp(-torch.arange(-6.0, 7.0) ** 2 / (2 * sigma**2))
        taps = taps / taps.sum()
        padded = torch.nn.functional.pad(x[None], (6, 6, 6, 6), mode="replicate")
        x = torch.nn.functional.conv2d(padded, (taps[:, None] * taps[None, :]).expand(3, 1, 13, 13), groups=3)[0]
    clear = torch.ones_like(x, dtype=torch.bool)
    if params["solarize"]:
        clear = (x - 128 / 255).abs() > 2e-4
        x = torch.where(x < 128 / 255, x, 1 - x)
    return x, clear


def test_worker_side_photometric_matches_a_per_image_reference() -> None:
    """CPU training applies the photometric ops in the DataLoader workers (CollateViews), CUDA training on the
    device (BatchAugmenter): both give, image by image, the chain written out with torchvision's functions."""
    from pretrain.data import CollateViews

    image = random_image(5, (32, 32))
    samples = [A.two_views(image, seed, 16, SCALE) for seed in range(8)]
    for i, sample in enumerate(samples):  # every op on for some images and off for others, in both views
        for params in (sample["params1"], sample["params2"]):
            params["jitter"] = torch.tensor(i % 4 != 3)
            params["gray"] = torch.tensor(i % 3 == 0)
        sample["params2"]["blur_sigma"] = torch.tensor([0.0, 0.7, 0.0, 1.9][i % 4])
        sample["params2"]["solarize"] = torch.tensor(i % 2 == 0)
    raw = CollateViews(photometric=False)(samples)
    assert torch.equal(raw["view2"], torch.stack([s["view2"] for s in samples]))
    assert raw["params2"]["solarize"].tolist() == [i % 2 == 0 for i in range(8)]
    in_worker = CollateViews(photometric=True)(samples)
    assert set(in_worker) == {"view1", "view2"} and in_worker["view1"].dtype == torch.float32

    augmenter = A.BatchAugmenter(torch.device("cpu"), channels_last=False)
    on_device = augmenter(raw)
    # The training process passes the workers' float views through untouched (they are augmented already).
    passed = augmenter(in_worker)
    assert torch.equal(passed[0], in_worker["view1"]) and torch.equal(passed[1], in_worker["view2"])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for path, views in (("workers", (in_worker["view1"], in_worker["view2"])), ("device", on_device)):
        for v, batch in enumerate(views, start=1):
            for i, sample in enumerate(samples):
                expected, clear = _reference_view(sample[f"view{v}"], sample[f"params{v}"])
                got = batch[i] * std + mean
                # torchvision's tensor grey weights red 0.2989 where PIL's 0.299: <= 1e-4 per op.
                torch.testing.assert_close(got[clear], expected[clear], atol=2e-4, rtol=0,
                                           msg=lambda m, p=path, v=v, i=i: f"{p} view{v} image {i}: {m}")
