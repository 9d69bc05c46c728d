"""The shared detection trainer (benchmarks.detection): batch stream, flip, resize, anchors, losses, parameter
groups, exact resume, precise BN and predict order, on a small synthetic Faster R-CNN (CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RPNHead

from benchmarks.detection import data, rcnn, trainer
from byol_bench import training
from byol_bench.runlog import RunLog


class Boxes(torch.utils.data.Dataset):
    """Synthetic detection samples: one bright rectangle (class 1 or 2 by colour) on a dark uint8 image."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            h, w = (48, 64) if i % 3 else (64, 48)
            image = np.full((3, h, w), 20, dtype=np.uint8)
            x0, y0 = rng.integers(2, w // 2), rng.integers(2, h // 2)
            x1, y1 = x0 + rng.integers(12, w // 2), y0 + rng.integers(12, h // 2)
            label = 1 + i % 2
            image[label - 1, y0:y1, x0:x1] = 230
            self.samples.append((torch.from_numpy(image), {
                "boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                "labels": torch.tensor([label]), "image_id": i}))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]

    def sizes(self) -> list[tuple[int, int]]:
        return [(im.shape[2], im.shape[1]) for im, _ in self.samples]


def small_model(seed: int = 0) -> GeneralizedRCNN:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.BatchNorm2d(16), nn.ReLU())

    class Backbone(nn.Module):
        out_channels = 16

        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            return {"0": self.body(x)}

    anchors = rcnn.DetectronAnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),))
    rpn = rcnn.L1RegionProposalNetwork(anchors, RPNHead(16, 9), 0.7, 0.3, 32, 0.5, {"training": 200, "testing": 100},
                                       {"training": 50, "testing": 20}, 0.7)
    heads = RoIHeads(rcnn.AlignedRoIPool(4, 1 / 4), nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU()),
                     FastRCNNPredictor(32, 3), 0.5, 0.5, 16, 0.25, None, 0.05, 0.5, 10)
    transform = rcnn.ShortestEdgeTransform((48, 56, 64), 100, 64, 100, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return GeneralizedRCNN(Backbone(), rpn, heads, transform)


def settings(**kw) -> trainer.TrainSettings:
    base = dict(max_iters=6, base_lr=0.01, steps=(4,), warmup_iters=2, batch_size_per_device=2, accumulate=2,
                ckpt_every_iters=3, num_workers=0, seed=3)
    return trainer.TrainSettings(**{**base, **kw})


# ------------------------------------------------------------------ data


def test_stream_groups_by_orientation_and_resumes_mid_stream():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1]
    stream = data.GroupedBatchStream(groups, 2, seed=5)
    head = list(zip(range(12), stream, strict=False))
    batches = [b for _, b in head]
    assert all(len(b) == 2 and len({groups[i] for i, _ in b}) == 1 for b in batches)
    resumed = [b for _, b in zip(range(7), data.GroupedBatchStream(groups, 2, seed=5, start=5), strict=False)]
    assert resumed == batches[5:12]
    other = [b for _, b in zip(range(12), data.GroupedBatchStream(groups, 2, seed=6), strict=False)]
    assert other != batches
    # two ranks share each pass's permutation and take disjoint halves of it
    r0 = data.GroupedBatchStream([0] * 8, 1, seed=1, rank=0, world_size=2)
    r1 = data.GroupedBatchStream([0] * 8, 1, seed=1, rank=1, world_size=2)
    first = [b[0][0] for _, b in zip(range(4), r0, strict=False)] + [b[0][0] for _, b in zip(range(4), r1,
                                                                                               strict=False)]
    assert sorted(first) == list(range(8))


def test_hflip_boxes_and_masks():
    image = torch.arange(2 * 3 * 5, dtype=torch.uint8).reshape(3, 2, 5)
    masks = torch.zeros(1, 2, 5, dtype=torch.uint8)
    masks[0, :, 0:2] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1]), "masks": masks}
    flipped, t = data.hflip(image, target)
    assert torch.equal(flipped[:, :, 0], image[:, :, 4])
    assert t["boxes"].tolist() == [[3.0, 0.0, 5.0, 2.0]]  # pixel edges: columns 0-1 become columns 3-4
    assert t["masks"][0, 0].tolist() == [0, 0, 0, 1, 1]
    assert target["boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0]]  # the input is untouched


@pytest.mark.parametrize(("hw", "short", "longest", "expect"), [
    ((375, 500), 800, 1333, (800, 1067)),      # VOC landscape: 500 * 800 / 375 = 1066.67 -> 1067 (rounded half up)
    ((500, 375), 480, 1333, (640, 480)),
    ((100, 1000), 800, 1333, (133, 1333)),     # the long side caps the scale
])
def test_shortest_edge_size_is_detectron2s(hw, short, longest, expect):
    assert rcnn.shortest_edge_size(*hw, short, longest) == expect


def test_transform_resizes_boxes_with_the_image_and_draws_train_sizes():
    tf = rcnn.ShortestEdgeTransform((480, 512), 1333, 800, 1333, (0.5,) * 3, (0.25,) * 3)
    image = torch.rand(3, 375, 500)
    target = {"boxes": torch.tensor([[10.0, 20.0, 110.0, 220.0]]), "labels": torch.tensor([1])}
    tf.eval()
    out, t = tf.resize(image, target)
    assert out.shape[-2:] == (800, 1067)
    torch.testing.assert_close(t["boxes"], torch.tensor([[10 * 1067 / 500, 20 * 800 / 375, 110 * 1067 / 500,
                                                          220 * 800 / 375]]))
    tf.train()
    torch.manual_seed(0)
    shorts = {tf.resize(image)[0].shape[-2] for _ in range(20)}
    assert shorts == {480, 512}


def test_anchors_are_detectron2s_unrounded_cell_anchors():
    gen = rcnn.DetectronAnchorGenerator(((32, 64),), ((0.5, 1.0, 2.0),))
    cell = gen.cell_anchors[0]
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # area 32^2, height/width 0.5
    torch.testing.assert_close(cell[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close((cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1]),
                               torch.tensor([32.0**2, 64.0**2] * 3))
    torch.testing.assert_close((cell[:, 3] - cell[:, 1]) / (cell[:, 2] - cell[:, 0]),
                               torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0]))


def test_anchors_stay_float32_for_bf16_features():
    gen = rcnn.DetectronAnchorGenerator(((32,),), ((1.0,),))
    features = torch.zeros(1, 4, 64, 64, dtype=torch.bfloat16)  # a 1024 px image at stride 16
    anchors = gen(ImageList(torch.zeros(1, 3, 1024, 1024), [(1024, 1024)]), [features])[0]
    assert anchors.dtype == torch.float32
    assert anchors[-1].tolist() == [1008.0 - 16.0, 1008.0 - 16.0, 1008.0 + 16.0, 1008.0 + 16.0]  # 1008 = 63 * 16


def test_rpn_head_outputs_float32_under_autocast():
    torch.manual_seed(0)
    head = rcnn.Float32OutputRPNHead(8, 3)
    x = [torch.randn(1, 8, 5, 5)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, deltas = head(x)
        hidden = head.conv(x[0])  # the 3x3 conv follows autocast (bf16)
    assert hidden.dtype == torch.bfloat16 and logits[0].dtype == deltas[0].dtype == torch.float32
    torch.testing.assert_close(deltas[0], head.bbox_pred(hidden.float()))
    plain = RPNHead(8, 3)
    plain.load_state_dict(head.state_dict())
    for a, b in zip(head(x), plain(x), strict=True):  # without autocast: torchvision's RPNHead
        torch.testing.assert_close(a[0], b[0])


def test_fastrcnn_l1_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    deltas = torch.zeros(2, 12)
    deltas[1, 4:8] = torch.tensor([1.0, -1.0, 0.5, 0.0])  # class 1's deltas of RoI 1
    labels = [torch.tensor([0, 1])]
    targets = [torch.tensor([[9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 1.0]])]
    cls, box = rcnn.fastrcnn_l1_loss(logits, deltas, labels, targets)
    expect_cls = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert cls.item() == pytest.approx(expect_cls)
    assert box.item() == pytest.approx((1 + 1 + 0.5 + 1) / 2)  # background RoI ignored; divided by 2 RoIs


# ------------------------------------------------------------------ optimizer and training


def test_param_groups_put_norm_parameters_without_weight_decay():
    model = small_model()
    groups = {g["name"]: g for g in trainer.param_groups(model, 1e-4, 0.0)}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in groups["norm"]["params"]} == norm_ids and groups["norm"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 1e-4
    every = {id(p) for p in model.parameters()}
    assert {id(p) for g in groups.values() for p in g["params"]} == every  # nothing left out, nothing twice
    assert sum(len(g["params"]) for g in groups.values()) == len(every)


def _train(tmp_path, s: trainer.TrainSettings, resume: bool = False):
    model = trainer.prepare(small_model(), torch.device("cpu"))
    ds = Boxes()
    resume_from = training.find_resume(tmp_path, "auto") if resume else None
    result = trainer.train(model, ds, data.orientation_groups(ds.sizes()), s, device=torch.device("cpu"),
                           run_dir=tmp_path, config_hash="h", log=RunLog(tmp_path), resume_from=resume_from,
                           desc="test")
    return model, result


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight, result = _train(tmp_path / "a", settings())
    assert result.finished and result.iters_done == 6 and (tmp_path / "a" / "loss.png").is_file()
    _, stopped = _train(tmp_path / "b", settings(stop_after_iters=4))
    assert not stopped.finished and stopped.iters_done == 4
    resumed, again = _train(tmp_path / "b", settings(stop_after_iters=4), resume=True)
    assert again.finished and again.iters_done == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    rows = RunLog(tmp_path / "b").path.read_text().splitlines()
    assert len(rows) == 6  # the log holds each iteration once
    # the schedule reached the optimizer: warm-up, then the step at iteration 4
    lrs = [__import__("json").loads(r)["lr"] for r in rows]
    assert lrs == pytest.approx(list(settings().lrs()))
    assert lrs[0] == pytest.approx(0.01 * 0.001) and lrs[3] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.001)


def test_non_finite_loss_stops_the_run(tmp_path):
    # a NaN learning rate poisons the weights at the first step: the second iteration's loss is NaN
    with pytest.raises(training.DivergenceError, match="diverged at iteration 2: loss nan is not finite"):
        _train(tmp_path, settings(base_lr=float("nan"), warmup_iters=0, max_iters=3, accumulate=1))
    assert not (tmp_path / "latest.pth").exists()  # nothing checkpointed from the poisoned run


def test_precise_bn_averages_batch_statistics():
    class PixelBN(nn.Module):  # train-mode forward as a detector's, BN on the raw pixels
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3, momentum=0.1)

        def forward(self, images, targets=None):
            for im in images:
                self.bn(im[None])
            return {}

    ds = Boxes()
    groups = data.orientation_groups(ds.sizes())
    s = settings(batch_size_per_device=1, accumulate=1, flip_prob=0.0)
    model = PixelBN()
    assert trainer.precise_bn(model, ds, groups, s, device=torch.device("cpu"), num_iters=5) == 1
    stream = data.GroupedBatchStream(groups, 1, s.seed, tag="precise-bn")
    images = [ds[b[0][0]][0].float() / 255 for _, b in zip(range(5), stream, strict=False)]
    mean = torch.stack([im.mean(dim=(1, 2)) for im in images]).mean(0)
    var = torch.stack([im.flatten(1).var(dim=1, unbiased=True) for im in images]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean)
    torch.testing.assert_close(model.bn.running_var, var)
    assert model.bn.momentum == 0.1


def test_predict_returns_dataset_order_through_convert():
    model = small_model().eval()
    ds = Boxes(5)
    out = trainer.predict(model, ds, device=torch.device("cpu"), precision="fp32", batch_size=2,
                          convert=lambda det, target: (target["image_id"], sorted(det)))
    assert [o[0] for o in out] == [0, 1, 2, 3, 4]
    assert out[0][1] == ["boxes", "labels", "scores"]
    assert model.training is False


def test_rpn_l1_loss_by_hand():
    rpn = rcnn.L1RegionProposalNetwork(rcnn.DetectronAnchorGenerator(((8,),), ((1.0,),)), RPNHead(4, 1), 0.7, 0.3, 8,
                                       0.5, {"training": 10, "testing": 10}, {"training": 10, "testing": 10}, 0.7)
    labels = [torch.tensor([1.0, 0.0, 1.0, -1.0, 0.0])]  # 2 positives + 2 negatives: all sampled (batch 8)
    logits = torch.tensor([[0.5], [-1.0], [2.0], [9.0], [0.0]])
    deltas = torch.tensor([[1.0, 0, 0, 0], [5, 5, 5, 5], [0, -2, 0, 0], [7, 7, 7, 7], [3, 3, 3, 3]])
    targets = [torch.zeros(5, 4)]
    obj, box = rpn.compute_loss(logits, deltas, labels, targets)
    bce = sum(math.log(1 + math.exp(-x)) for x in (0.5, 2.0)) + sum(math.log(1 + math.exp(x)) for x in (-1.0, 0.0))
    assert obj.item() == pytest.approx(bce / 8)  # summed, divided by batch_size_per_image x images
    assert box.item() == pytest.approx((1 + 2) / 8)  # L1 on the positives only
