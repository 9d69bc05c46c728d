"""The detection family: Faster R-CNN C4 on VOC07+12 (:mod:`.voc`, ``python -m benchmarks.det_voc``), Mask R-CNN
FPN on COCO (:mod:`.coco`, ``python -m benchmarks.det_coco``), and what they share.

Built on the core training pieces (``byol_bench.training``: schedules, checkpoints, DDP, autocast;
``byol_bench.runlog.Progress``; ``byol_bench.dist``), not a second copy of them. Any torchvision-style detection
model works unchanged: ``model(images, targets) -> {loss name: scalar}`` in train mode and ``model(images) ->
[{"boxes", "scores", "labels"[, "masks"]}]`` in eval mode, ``images`` being float [0, 1] RGB tensors at their
original size (the model's own ``transform`` resizes and normalises; use
:class:`~benchmarks.detection.rcnn.ShortestEdgeTransform` for detectron2's multi-scale resize).

API (a runner's pipeline, top to bottom)::

    from benchmarks.detection import data, rcnn, trainer

    # samples: dataset[i] -> (uint8 (3, H, W) RGB tensor, {"boxes": float32 (N, 4) x0 y0 x1 y1 pixel edges,
    #          "labels": int64 (N,) in 1..C, optional "masks": uint8 (N, H, W), anything else passed through})
    groups = data.orientation_groups([(w, h) for each image])        # aspect-ratio grouping
    model = trainer.prepare(model, device)                             # SyncBN when multi-GPU, .to(device)
    settings = trainer.TrainSettings(max_iters=..., base_lr=..., steps=(...), warmup_iters=..., accumulate=...,
                                     batch_size_per_device=2, seed=..., precision="bf16"|"fp32", ...)
    result = trainer.train(model, train_set, groups, settings, device=device, run_dir=run_dir,
                           config_hash=run.config_hash, log=log, resume_from=training.resume_point(run_dir, cfg),
                           desc="det_voc")                             # -> TrainResult (iters_done, finished, ...)
    if not result.finished: return {}                                  # stopped by stop_after_iters
    trainer.precise_bn(model, train_set, groups, settings, device=device, num_iters=200)
    detections = trainer.predict(model, test_set, device=device, precision=..., convert=fn)   # dataset order

``trainer.train`` does: SGD with :func:`trainer.param_groups` (no weight decay on norm parameters), the
``warmup_multistep_lr`` schedule per iteration, gradient accumulation, DDP (``no_sync`` on all but the last
micro-batch), bf16 autocast, a fail-loud check of non-finite losses, one ``log.jsonl`` row per iteration, a progress
line with ETA, ``latest.pth`` every ``ckpt_every_iters`` (exact resume: everything random is a function of
``(seed, iteration, rank)``) and ``loss.png``. Modules:

* :mod:`.voc`, :mod:`.coco` — the two runners (neither imports the other);
* :mod:`.c4` — the Faster R-CNN R50-C4 of ``det_voc``;
* :mod:`.data` — the deterministic grouped batch stream, the flip, ``collate``, ``to_device``;
* :mod:`.rcnn` — torchvision R-CNN pieces with detectron2's arithmetic (resize, anchors, L1 losses, RoIAlignV2);
* :mod:`.trainer` — ``TrainSettings``, ``prepare``, ``param_groups``, ``train``, ``precise_bn``, ``predict``, and
  what both runners resolve from their configs (``batch_policy``, ``DetectionResolved``);
* :mod:`.voc_eval` — the VOC07 11-point AP at IoU .50:.95 of detectron2's ``PascalVOCDetectionEvaluator``, from
  ``comp4_det_test_<class>.txt`` results files;
* :mod:`.mask_rcnn` — mmdetection's Mask R-CNN R50-FPN (``det_coco``) from torchvision blocks: FPN with norms,
  aligned multi-level RoIAlign, 4conv1fc box head, binary aligned mask targets;
* :mod:`.coco_eval` — COCO results files (``bbox.json``, ``segm.json`` with RLE masks) scored by pycocotools'
  ``COCOeval``;
* :mod:`.detectron2_engine`, :mod:`.detectron2_voc`, :mod:`.detectron2_coco` — ``engine=detectron2``: what both
  engines share (install check, export + config + train_net subprocess, launcher), and each runner's train_net.
"""
