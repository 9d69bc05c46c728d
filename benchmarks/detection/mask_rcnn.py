"""Mask R-CNN R50-FPN as mmdetection's ``mask_rcnn_r50_fpn_mstrain_1x_coco`` (the mmselfsup benchmark config; B §5.3),
built from torchvision's detection blocks (``GeneralizedRCNN``, ``BackboneWithFPN``, ``RPNHead``,
``RegionProposalNetwork``, ``RoIHeads``, ``FastRCNNConvFCHead``, ``MaskRCNNHeads``) and the shared pieces of
:mod:`benchmarks.detection.rcnn` (unrounded anchors, L1 losses, the resize); trained by
:mod:`benchmarks.detection.trainer`.

What is built (mmdet's ``_base_/models/mask-rcnn_r50_fpn.py`` with the benchmark's overrides):

* backbone: the given torchvision ResNet, nothing frozen, its BN training (``frozen_stages=-1``, ``norm_eval=False``);
* neck: FPN, 256 channels on res2-res5 with a norm after every conv (``neck.norm_cfg``), P6 by max-pool(1, stride 2)
  of P5 (``num_outs=5``, no extra convs), xavier-uniform conv init;
* RPN: one 3x3 conv; anchors of scale 8 x strides 4..64 (32..512, one size per level), ratios h/w 0.5, 1, 2, not
  rounded, centred on each cell's corner (mmdet ``AnchorGenerator``, center_offset 0);
  IoU 0.7 / 0.3 with low-quality matches, 256 anchors 50 % positive; proposals: top 2000 per level -> NMS 0.7 ->
  1000 per image in training, 1000 -> 1000 at test; sigmoid cross-entropy + **L1** box loss;
* RoI heads: mmcv RoIAlign (**aligned=True, sampling_ratio=0**) 7x7 (box) and 14x14 (mask) on P2-P5 with mmdet's
  level mapping ``floor(log2(sqrt(wh) / 56))``; ``Shared4Conv1FCBBoxHead`` (4 x conv3x3-256-norm-ReLU, FC 1024,
  xavier-uniform FC, cls Normal(0, 0.01), reg Normal(0, 0.001)); box coder stds 0.1, 0.1, 0.2, 0.2; IoU 0.5,
  512 RoIs 25 % positive, ground truth added as proposals; softmax cross-entropy + **L1** box loss; ``FCNMaskHead``
  (4 x conv3x3-256-norm-ReLU, deconv 2x, 1x1 logits) with 28x28 **binary** targets cut from the ground-truth masks by
  the same aligned RoIAlign (mmdet ``BitmapMasks.crop_and_resize``); test: score 0.05, class-wise NMS 0.5, 100 per
  image, masks pasted at the image size (thresholded at 0.5 by the evaluation);
* input: RGB in [0, 1] normalised with the ImageNet mean/std (= mmdet's 0-255 mean/std), keep-ratio resize to
  (1333, s) with ``s`` drawn per image from ``train_min_sizes`` in training and ``test_min_size`` at test, sizes
  rounded half up as mmcv ``rescale_size``, padded to a multiple of 32 (``rcnn.ShortestEdgeTransform``).

Norm layers are ``nn.BatchNorm2d`` (``dist.maybe_sync_bn`` makes them SyncBN in a multi-GPU job, as the config).

Remaining differences from mmdet (docs/DETECTION.md, COCO section): torchvision's RPN low-quality matches have no
``min_pos_iou=0.3`` floor; its box predictor also regresses the background class (unused); its test-time mask paste
works on integer boxes (mmdet's ``_do_paste_mask`` samples with float boxes); images are resized as float tensors
(antialiased bilinear) rather than uint8 with cv2; the RPN losses are divided by 256 x images (mmdet: the number of
anchors sampled, the same unless an image has fewer than 256 anchors).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from benchmarks.detection.rcnn import (
    DetectronAnchorGenerator,
    Float32,
    L1RegionProposalNetwork,
    ShortestEdgeTransform,
    fastrcnn_l1_loss,
)
from byol_bench.backbone import feature_channels

STRIDES = (4, 8, 16, 32)  # P2-P5, pooled by the RoI heads; P6 (stride 64) feeds the RPN only
ANCHOR_SIZES = tuple((8 * s,) for s in (*STRIDES, 64))  # mmdet: scale 8 x stride, one size per level
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
MASK_SIZE = 28
# ImageNet mean/std on [0, 1] inputs: mmdet's mean [123.675, 116.28, 103.53] / std [58.395, 57.12, 57.375] on 0-255
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def build_mask_rcnn(backbone: nn.Module, num_classes: int, *, train_min_sizes: tuple[int, ...] = (640, 672, 704, 736,
                    768, 800), test_min_size: int = 800, max_size: int = 1333, fpn_channels: int = 256,
                    fc_channels: int = 1024, rois_per_image: int = 512,
                    norm_layer: type[nn.Module] = nn.BatchNorm2d) -> GeneralizedRCNN:
    """The mmdet Mask R-CNN R50-FPN (module docstring) around a torchvision ResNet.

    Args:
        backbone: a torchvision ResNet (any depth: the FPN's inputs follow its stage widths); its ``fc`` is unused.
        num_classes: object classes without the background (80 for COCO); labels are ``1..num_classes``.
        train_min_sizes: short sides drawn from, per image, in training (keep ratio, long side <= ``max_size``).
        test_min_size: the short side at test.
        max_size: the long side's limit.
        fpn_channels: width of the FPN, of the RPN conv and of every head conv (256 in the config; smaller only in
            tiny runs, where CPU time is the limit).
        fc_channels: width of the box head's FC (1024 in the config).
        rois_per_image: RoIs sampled per image for the box head in training (512 in the config).
        norm_layer: the norm of the FPN and the heads.

    Returns:
        A ``GeneralizedRCNN``: ``model(images, targets)`` returns the loss dict in train mode, the detections
        (``boxes``, ``labels``, ``scores``, ``masks`` (N, 1, H, W) probabilities, in input-image pixels) in eval mode.
    """
    widths = list(feature_channels(backbone).values())[1:]  # res2..res5
    features = BackboneWithFPN(backbone, {f"layer{i}": str(i - 1) for i in range(1, 5)}, widths, fpn_channels,
                               extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer)
    anchors = FixedStrideAnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS, (*STRIDES, 64))
    rpn = L1RegionProposalNetwork(
        anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": 2000, "testing": 1000}, post_nms_top_n={"training": 1000, "testing": 1000},
        nms_thresh=0.7)
    names = [str(i) for i in range(len(STRIDES))]
    box_head = FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [fc_channels], norm_layer=norm_layer)
    predictor = FastRCNNPredictor(fc_channels, num_classes + 1)
    _init_like_mmdet(features.fpn, box_head, predictor)
    roi_heads = MMDetRoIHeads(
        box_roi_pool=FPNRoIAlign(names, STRIDES, 7),
        box_head=box_head,
        box_predictor=Float32(predictor),  # bf16 box deltas would move boxes by pixels (rcnn.Float32)
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=rois_per_image, positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),  # = mmdet target_stds (0.1, 0.1, 0.2, 0.2)
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
        mask_roi_pool=FPNRoIAlign(names, STRIDES, 14),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1, norm_layer=norm_layer),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1))
    transform = ShortestEdgeTransform(train_min_sizes, max_size, test_min_size, max_size, IMAGE_MEAN, IMAGE_STD,
                                      size_divisible=32)
    return GeneralizedRCNN(features, rpn, roi_heads, transform)


class FixedStrideAnchorGenerator(DetectronAnchorGenerator):
    """Unrounded anchors (``rcnn.DetectronAnchorGenerator``) laid out with the levels' true strides.

    torchvision infers a level's stride as ``padded image size // feature size``: exact on P2-P5 of an input padded
    to 32, but P6 (max-pool of P5) of a 25 x 38 P5 is 13 x 19, and ``800 // 13 = 61`` would spread its anchors at 61
    px instead of mmdet's 64.
    """

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...],
                 strides: tuple[int, ...]) -> None:
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        device = feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


def _init_like_mmdet(fpn: nn.Module, box_head: nn.Module, predictor: FastRCNNPredictor) -> None:
    """The config's initialisations where torchvision's differ: FPN convs and the shared FC xavier-uniform (mmdet
    ``FPN`` / ``ConvFCBBoxHead`` init_cfg), the classifier Normal(0, 0.01) and the box regressor Normal(0, 0.001)
    (``BBoxHead``). The RPN head (Normal 0.01) and the head convs (kaiming fan-out) already agree."""
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


class FPNRoIAlign(nn.Module):
    """mmdet's ``SingleRoIExtractor`` with mmcv ``RoIAlign(output_size, sampling_ratio=0, aligned=True)``.

    Each RoI is pooled from one level: ``floor(log2(sqrt(w * h) / 56 + 1e-6))`` clamped to the levels (mmdet
    ``map_roi_levels``, finest_scale 56: under 112 px -> P2, 112-224 -> P3, 224-448 -> P4, larger -> P5).
    ``aligned=True`` shifts the box by half a pixel so that sample points sit on pixel centres (detectron2's
    ROIAlignV2); ``sampling_ratio=0`` takes ``ceil(bin size)`` samples per bin. torchvision's ``MultiScaleRoIAlign``
    has neither (aligned=False, a fixed sampling ratio).
    """

    def __init__(self, featmap_names: list[str], strides: tuple[int, ...], output_size: int,
                 finest_scale: int = 56) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.strides = tuple(strides)
        self.output_size = (output_size, output_size)
        self.finest_scale = finest_scale

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """The pyramid level (0 = the finest) each ``(N, 4)`` xyxy box is pooled from."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        return torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def forward(self, x: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.levels(rois[:, 1:])
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, stride) in enumerate(zip(feats, self.strides, strict=True)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = roi_align(feat, rois[idx].to(feat.dtype), self.output_size, spatial_scale=1.0 / stride,
                                     sampling_ratio=0, aligned=True).to(out.dtype)
        return out


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor,
                 size: int = MASK_SIZE) -> torch.Tensor:
    """Binary ``size x size`` mask targets: each positive RoI's matched ground-truth mask, cut out by RoIAlign
    (aligned, adaptive sampling) and thresholded at 0.5 (mmdet ``BitmapMasks.crop_and_resize(binarize=True)``;
    torchvision's ``project_masks_on_boxes`` keeps soft, unaligned targets).

    Args:
        gt_masks: (G, H, W) uint8/bool ground-truth masks at the network input's scale.
        boxes: (P, 4) xyxy RoIs in the same pixels.
        matched: (P,) index of each RoI's ground truth.
    """
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                      aligned=True)
    return (crops[:, 0] >= 0.5).to(boxes.dtype)


class MMDetRoIHeads(RoIHeads):
    """torchvision's box and mask heads with the config's training losses: softmax cross-entropy and **L1** on the
    positives' class-specific deltas (divided by the number of sampled RoIs, mmdet ``avg_factor``), and per-pixel
    binary cross-entropy against :func:`mask_targets`. Evaluation is torchvision's (``RoIHeads.forward``)."""

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes)
        if targets is None:
            raise ValueError("training needs targets (boxes, labels, masks per image)")
        proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        loss_cls, loss_box = fastrcnn_l1_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

        positive = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [p[i] for p, i in zip(proposals, positive, strict=True)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
        gt = torch.cat([mask_targets(t["masks"], b, m[i]) for t, b, m, i
                        in zip(targets, mask_boxes, matched, positive, strict=True)])
        gt_labels = torch.cat([t["labels"][m[i]] for t, m, i in zip(targets, matched, positive, strict=True)])
        if len(gt) == 0:  # no positive RoI in the batch: a zero that keeps the mask head in the graph
            losses["loss_mask"] = mask_logits.sum() * 0
        else:
            picked = mask_logits[torch.arange(len(gt_labels), device=gt_labels.device), gt_labels]
            losses["loss_mask"] = F.binary_cross_entropy_with_logits(picked, gt)
        return [], losses
