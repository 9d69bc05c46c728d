"""The protocols of the suite, listed once: what runs them, their presets, their tables and their GPU counts.

Everything that walks the protocols reads :data:`PROTOCOLS`: the suite command (``python -m benchmarks.suite``,
behind ``scripts/run_all_benchmarks.sh``), its launchers and ``--plan``, ``scripts/rehearse.py``, the tables'
end-of-run summary (:mod:`byol_bench.tables`) and the conventions test. Adding a protocol is one entry here plus
its runner (docs/RUNNERS.md). The list names modules as strings: the core never imports ``benchmarks/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """One protocol of the suite.

    Attributes:
        name: the records' ``protocol`` field and the folder of its presets (``configs/<name>/``).
        module: what ``python -m`` (or ``torchrun -m``) runs.
        runner: the module holding its ``run(cfg)``, ``PROTOCOL`` and ``PRESET_DIR`` (docs/RUNNERS.md).
        full: the full presets, in the order they run, each with its reference GPU count: the processes the
            recipe is written for (the ``<N>`` of ``<N>xb<B>`` in the name; 1 for a recipe that trains nothing).
        tiny: the presets of the embedded data (one per dataset of a runner that fills several tables).
        tables: the titles of the tables its records fill (:data:`byol_bench.tables.TABLES`).
        headline: the figure the end-of-run summary quotes: (metric, how to say it).
    """

    name: str
    module: str
    runner: str
    full: tuple[tuple[str, int], ...]
    tiny: tuple[str, ...]
    tables: tuple[str, ...]
    headline: tuple[str, str]

    def presets(self, scale: str) -> tuple[str, ...]:
        """The presets of ``scale`` (``tiny`` or ``full``)."""
        return self.tiny if scale == "tiny" else tuple(preset for preset, _ in self.full)

    def gpus(self, preset: str) -> int:
        """The reference GPU count of a full preset; 1 for a tiny one (the embedded data is one process' work)."""
        return dict(self.full).get(preset, 1)


_LINEAR_TABLES = ("ImageNet Linear Evaluation", "iNaturalist2018 Linear Evaluation", "Places205 Linear Evaluation")

# In the order of the tables.
PROTOCOLS: tuple[Protocol, ...] = (
    Protocol("voc07_svm", "benchmarks.voc07_svm", "benchmarks.voc07_svm.runner",
             full=(("voc07_svm_mmselfsup", 1),),
             tiny=("tiny",), tables=("VOC SVM / Low-shot SVM",), headline=("svm", "SVM mAP")),
    Protocol("linear_mhead", "benchmarks.linear_mhead", "benchmarks.linear.mhead",
             full=(("linear-mhead_resnet50_8xb32-steplr-90e_in1k", 8),
                   ("linear-mhead_resnet50_8xb32-steplr-84e_inat18", 8),
                   ("linear-mhead_resnet50_8xb32-steplr-28e_places205", 8)),
             tiny=("tiny", "tiny-inat18", "tiny-places205"), tables=_LINEAR_TABLES,
             headline=("feat5", "top-1 feature5")),
    Protocol("linear_avgpool", "benchmarks.linear_avgpool", "benchmarks.linear.avgpool",
             full=(("linear-avgpool_resnet50_8xb32-steplr-100e_in1k", 8),
                   ("linear-avgpool_resnet50_8xb32-steplr-100e_inat18", 8),
                   ("linear-avgpool_resnet50_8xb32-steplr-100e_places205", 8)),
             tiny=("tiny", "tiny-inat18", "tiny-places205"), tables=_LINEAR_TABLES, headline=("top1", "top-1")),
    Protocol("semi_sup", "benchmarks.semi_sup", "benchmarks.semi_sup.runner",
             full=(("resnet50_grid9_4xb64-steplr-20e_in1k-1pct", 4),
                   ("resnet50_grid9_4xb64-steplr-20e_in1k-10pct", 4)),
             tiny=("tiny", "tiny-imagenet_10pct"), tables=("Semi-Supervised Classification",),
             headline=("top1", "top-1")),
    Protocol("det_voc", "benchmarks.det_voc", "benchmarks.detection.voc",
             full=(("faster-rcnn_resnet50-c4_8xb2-24k_voc0712", 8),),
             tiny=("tiny",), tables=("Detection: Pascal VOC 2007 + 2012",), headline=("AP50", "AP50")),
    Protocol("det_coco", "benchmarks.det_coco", "benchmarks.detection.coco",
             full=(("mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco", 8),),
             tiny=("tiny",), tables=("Detection: COCO2017",), headline=("bbox_AP", "box AP")),
    Protocol("segmentation", "benchmarks.segmentation", "benchmarks.segmentation.runner",
             full=(("fcn_r50-d8_4xb4-20k_voc12aug-512x512", 4), ("fcn_r50-d8_4xb2-40k_cityscapes-769x769", 4)),
             tiny=("tiny", "tiny-cityscapes"),
             tables=("Segmentation: Pascal VOC 2012 + Aug", "Segmentation: Cityscapes"), headline=("mIoU", "mIoU")),
)

# The pretrainer writes the checkpoints the protocols read; it fills no table.
PRETRAIN = Protocol("pretrain", "pretrain", "pretrain.train",
                    full=(("byol_resnet50_16xb256-coslr-200e_in1k", 16),
                          ("byol_resnet50_8xb32-accum16-coslr-200e_in1k", 8),
                          ("byol_resnet50_16xb256-paper-1000e_in1k", 16)),
                    tiny=("tiny",), tables=(), headline=("knn_top1", "kNN top-1"))

BY_NAME: dict[str, Protocol] = {p.name: p for p in (PRETRAIN, *PROTOCOLS)}


Selection = list[tuple[Protocol, tuple[str, ...]]]  # protocols, each with the presets to run


def select(only: str, scale: str, protocols: tuple[Protocol, ...] = PROTOCOLS) -> Selection:
    """The protocols and presets named in ``only``, in the list's order: comma-separated protocols (each with its
    presets of ``scale``: ``tiny`` or ``full``) or ``protocol:preset`` items (that preset, whatever ``scale``);
    empty: every protocol at ``scale``.

    Raises:
        ValueError: an unknown protocol or preset; the message lists the valid ones.
    """
    by_name = {p.name: p for p in protocols}
    picked: dict[str, list[str]] = {}
    for item in (item.strip() for item in only.split(",")):
        if not item:
            continue
        name, _, preset = item.partition(":")
        if name not in by_name:
            raise ValueError(f"--only {item}: unknown protocol; valid: {', '.join(by_name)}")
        known = (*by_name[name].tiny, *by_name[name].presets("full"))
        if preset and preset not in known:
            raise ValueError(f"--only {item}: {name} has no preset {preset!r}; valid: {', '.join(known)}")
        picked.setdefault(name, []).extend([preset] if preset else by_name[name].presets(scale))
    return [(p, tuple(dict.fromkeys(picked[p.name])) if picked else p.presets(scale))
            for p in protocols if not picked or p.name in picked]
