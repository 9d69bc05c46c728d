"""The config fields every protocol runner shares, declared once (docs/RUNNERS.md, "Config fields").

A runner's config subclasses :class:`RunnerConfig` (a runner that trains: :class:`TrainerConfig`, by way of
:class:`EpochTrainerConfig` for the epoch-based classification recipes or :class:`IterTrainerConfig` for the
iteration-based ones), names its protocol and declares only its own fields::

    @dataclass(frozen=True)
    class Voc07SvmConfig(RunnerConfig, protocol=PROTOCOL):
        layers: tuple[str, ...] = opt(FEATURE_NAMES, "feature layers to evaluate (feat1..feat5)")
        ...

``protocol=`` gives ``out_dir`` its default, ``results/<protocol>``. Any other keyword sets the default of that
inherited field for this runner (``num_workers=8``, ``epochs=100``); its type, help and identity flag stay the ones
declared here. A field stays in the runner where its meaning, help or identity flag is the runner's own (``seed``
says what it seeds; ``precision`` is part of the hash in some epoch-based runners, not in others).
Declaring an inherited field again in the class body is refused, so each field has one help string and one
identity flag. The shared fields come first (``--help``, ``config.yaml``, the record's ``config``); the config hash
does not depend on the order of the fields.

A trainer's ``Resolved`` is, or subclasses, :class:`TrainerResolved`: the processes, the batch as run, the
precision and the device.

The pretrainer is not a runner: its checkpoint is its output (no ``ckpt`` nor ``encoder``; its ``arch`` names the
network it builds), so ``PretrainConfig`` declares its own fields; its ``force`` and ``resume`` follow the same
:func:`byol_bench.training.resume_point` rule.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Literal

from byol_bench.config import opt


@dataclass(frozen=True)
class RunnerConfig:
    """The fields of every runner's config; ``scripts/run_all_benchmarks.sh`` passes the first five by name."""

    preset: str = opt("custom", "preset name (set by --preset; names the record's config column)")
    ckpt: str = opt("", "checkpoint to evaluate (or fine-tune): any format `python -m adapters inspect` recognises")
    arch: str | None = opt(None, "ResNet name; None infers it from the weights")
    encoder: str = opt("online", "which encoder of a two-encoder checkpoint: online (as published) or target")
    data_root: str = opt("data", "folder holding the datasets in the layouts of docs/DATASETS.md", identity=False)
    out_dir: str = opt("results", "output: records/ and runs/ go here (a runner's default: results/<protocol>)",
                       identity=False)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: CUDA when available", identity=False)
    num_workers: int = opt(4, "DataLoader workers per process (decoding and augmentation)", identity=False)
    tiny: bool = opt(False, "tiny sizes on the embedded data: the record is marked not comparable")
    rehearsal: bool = opt(False, "rehearse a full preset: its sizes, two optimizer steps of one process of its "
                                 "world, evaluation on the first images; the record is no result (docs/REHEARSAL.md)",
                          identity="when_set")
    force: bool = opt(False, "redo even when a record for this checkpoint and config exists (a trainer trains "
                             "again from scratch)", identity=False)
    preflight: bool = opt(True, "check every file of every split the run reads (exists, image header readable, "
                                "label map of the image's size, annotation ids consistent) before any work; false "
                                "skips it (the record's config says so)", identity=False)
    wait_for_lock: bool = opt(False, "when another process holds the run folder: wait for it (then skip if it wrote "
                                     "the record) instead of refusing", identity=False)

    def __init_subclass__(cls, protocol: str | None = None, **defaults: Any) -> None:
        """``protocol``: ``out_dir`` defaults to ``results/<protocol>``; ``defaults``: inherited fields' defaults."""
        super().__init_subclass__()
        if protocol is not None:
            defaults = {"out_dir": f"results/{protocol}", **defaults}
        # Before @dataclass runs on cls: its inherited fields are the base's, its own annotations are the class body's.
        inherited = {f.name: f for f in dataclasses.fields(cls)}
        own = inspect.get_annotations(cls)
        again = sorted(set(own) & set(inherited))
        if again:
            raise TypeError(f"{cls.__name__} declares {', '.join(again)} again: inherited fields are declared once "
                            f"(byol_bench.runner_config); change a default as a class keyword, e.g. "
                            f"class {cls.__name__}(..., {again[0]}=...)")
        unknown = sorted(set(defaults) - set(inherited))
        if unknown:
            raise TypeError(f"{cls.__name__}: {', '.join(unknown)} is not an inherited field; declare it in the class")
        if not defaults:
            return
        hints = typing.get_type_hints(next(b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)))
        for name, default in defaults.items():
            # the inherited field with another default: @dataclass keeps it in the base's position
            own[name] = hints[name]
            setattr(cls, name, dataclasses.field(default=default, metadata=dict(inherited[name].metadata)))
        cls.__annotations__ = own


@dataclass(frozen=True)
class TrainerConfig(RunnerConfig):
    """A runner that trains (a probe, fine-tuning, a detector, a segmenter): it checkpoints and resumes, by the one
    rule of :func:`byol_bench.training.resume_point`."""

    resume: str = opt("auto", "auto: continue from the run folder's latest.pth if there is one (each grid cell, each "
                              "trial from its own); none: start afresh (refuses a folder that holds one); or a "
                              "checkpoint path. force=true starts afresh too", identity=False)


@dataclass(frozen=True)
class EpochTrainerConfig(TrainerConfig):
    """A classification trainer's epoch-based recipe (linear_mhead, linear_avgpool, semi_sup): a global batch kept
    whatever the process count, crops, and evaluation, checkpoints and stops every so many epochs."""

    epochs: int = opt(90, "training epochs", positive=True)
    global_batch_size: int = opt(256, "images per optimizer step over all processes (kept whatever the GPU count: "
                                      "each process takes its share)", positive=True)
    image_size: int = opt(224, "train crop and test center-crop size", positive=True)
    test_resize: int = opt(256, "test resize (short side) before the center crop", positive=True)
    eval_every_epochs: int = opt(10, "evaluate on the val split every this many epochs (and always after the final "
                                     "one)", positive=True)
    ckpt_every_epochs: int = opt(10, "save the training state every this many epochs (and at the end)",
                                 identity=False, positive=True)
    stop_after_epochs: int = opt(0, "stop after this many epochs in total, state saved, no record (0: run to the end; "
                                    "for tests of resume)", identity=False)


@dataclass(frozen=True)
class IterTrainerConfig(TrainerConfig):
    """An iteration-based recipe (det_voc, det_coco, segmentation): checkpoints and stops every so many iterations;
    its autocast precision is left out of the config hash."""

    ckpt_every_iters: int = opt(2000, "save the training state every this many iterations (and at the end)",
                                identity=False, positive=True)
    stop_after_iters: int = opt(0, "stop (det_voc: each trial) after this many iterations, state saved, no record (0: "
                                   "never; for tests of resume)", identity=False)
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "autocast: auto = bf16 on CUDA, fp32 on CPU",
                                                     identity=False)


@dataclass(frozen=True)
class TrainerResolved:
    """Values derived from the config and the machine; written as the run folder's ``resolved.json``."""

    world_size: int  # processes of the job
    batch_size_per_device: int  # images per process per forward pass
    global_batch_size: int  # images per optimizer step over all processes, as run
    precision: str  # fp32 or bf16 (autocast), as run
    device: str
