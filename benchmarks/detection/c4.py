"""The Faster R-CNN R50-C4 of the VOC detection protocol (PROTOCOLS.md B §5.1), from torchvision's detection blocks
with detectron2's arithmetic (:mod:`benchmarks.detection.rcnn`).

C4 trunk = stem..res4 of the checkpoint's ResNet (nothing frozen); res5 (its ``layer4``) inside the RoI head, then
the extra norm of MoCo's ``Res5ROIHeadsExtraNorm``, average pooling and the box predictor. ``det_voc`` trains it;
``scripts/bench_det.py`` times it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from benchmarks.detection import rcnn
from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD, feature_channels


class C4Trunk(nn.Module):
    """stem..res4 of a torchvision ResNet (stride 16): ``{"0": res4}``."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1,
                                  resnet.layer2, resnet.layer3)
        self.out_channels = feature_channels(resnet)["feat4"]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"0": self.body(x)}


class Res5Head(nn.Module):
    """res5 (the ResNet's ``layer4``, stride 2 on 14x14 RoIs -> 7x7) -> the extra norm -> average pooling."""

    def __init__(self, layer4: nn.Module, channels: int) -> None:
        super().__init__()
        self.res5 = layer4
        self.norm = nn.BatchNorm2d(channels)  # Res5ROIHeadsExtraNorm: one norm after res5, no activation

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.res5(x)).mean(dim=(2, 3))


class C4RoIHeads(RoIHeads):
    """torchvision's box-only ``RoIHeads`` with detectron2's L1 Fast R-CNN losses (``rcnn.fastrcnn_l1_loss``)."""

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            loss_cls, loss_box = rcnn.fastrcnn_l1_loss(class_logits, box_regression, labels, regression_targets)
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels, strict=True)], {}


def build_faster_rcnn_c4(resnet: nn.Module, cfg: Any, num_classes: int = 21) -> GeneralizedRCNN:
    """The C4 Faster R-CNN of B §5.1 around ``resnet``'s weights (its ``layer4`` becomes res5; ``fc`` is dropped).

    ``cfg``: the ``det_voc`` config (``rpn_topk_train``/``_test``, ``roi_batch_size_per_image``, the train and test
    sizes).
    """
    trunk = C4Trunk(resnet)
    anchors = rcnn.DetectronAnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),))
    rpn = rcnn.L1RegionProposalNetwork(
        anchors, rcnn.Float32OutputRPNHead(trunk.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_topk_train[0], "testing": cfg.rpn_topk_test[0]},
        post_nms_top_n={"training": cfg.rpn_topk_train[1], "testing": cfg.rpn_topk_test[1]}, nms_thresh=0.7)
    res5_channels = feature_channels(resnet)["feat5"]
    predictor = FastRCNNPredictor(res5_channels, num_classes)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    heads = C4RoIHeads(
        rcnn.AlignedRoIPool(14, 1 / 16), Res5Head(resnet.layer4, res5_channels), rcnn.Float32(predictor),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=cfg.roi_batch_size_per_image,
        positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    transform = rcnn.ShortestEdgeTransform(cfg.train_sizes, cfg.train_max_size, cfg.test_size, cfg.test_max_size,
                                           IMAGENET_MEAN, IMAGENET_STD, size_divisible=1)
    return GeneralizedRCNN(trunk, rpn, heads, transform)
