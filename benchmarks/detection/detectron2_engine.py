"""What both detectron2 engines share (``det_voc`` and ``det_coco`` with ``engine=detectron2``).

detectron2 has no PyPI release: ``pip install --no-build-isolation
'git+https://github.com/facebookresearch/detectron2.git'`` builds it against the installed torch (docs/DETECTION.md).

* in the runner's process: :func:`check_engine` (the one-line errors, before anything is written),
  :func:`resume_point` (the runners' resume rule on detectron2's output folder) and :func:`train_on_detectron2` (the
  trunk's ``.pkl`` export and the config file via :func:`write_inputs`, then a train_net module of this package in
  a subprocess on detectron2's own launcher);
* in the launched processes: :func:`launch_main` (detectron2's command line and ``launch``) and :func:`train_net`
  (``DefaultTrainer`` with the engine's files evaluator, which writes the results files our metric scores).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from adapters.export import to_detectron2
from byol_bench import dist, training
from byol_bench.backbone import trunk_state_dict
from byol_bench.checkpoint import atomic_write, atomic_write_text

INSTALL_HINT = ("engine=detectron2 needs detectron2, which has no PyPI release: pip install --no-build-isolation "
                "'git+https://github.com/facebookresearch/detectron2.git' (docs/DETECTION.md), or use engine=native")


def has_detectron2() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def check_engine(cfg: Any) -> None:
    """The one-line errors of ``engine=detectron2`` (both detection runners), before anything is written:
    detectron2 not importable, the runner started under torchrun (detectron2 launches its own processes), or a
    ``resume`` path (detectron2 continues from its own output folder only)."""
    if cfg.resume not in ("auto", "none"):
        raise ValueError(f"resume={cfg.resume!r}: engine=detectron2 continues from its own output folder; use "
                         "resume=auto or none")
    if not has_detectron2():
        raise ValueError(INSTALL_HINT)
    if dist.launch_rank() != 0 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("engine=detectron2 runs as one process (no torchrun): detectron2 launches one process per "
                         "visible GPU itself")


def resume_point(output_dir: Path, cfg: Any) -> bool:
    """Whether detectron2 continues from its ``output_dir/last_checkpoint``: the runners' resume rule
    (``training.resume_point``: ``--force`` trains afresh; ``resume=none`` refuses a folder that holds one)."""
    return training.resume_point(output_dir, cfg, name="last_checkpoint") is not None


def write_inputs(trunk: dict[str, torch.Tensor], values_of: Any, trial_dir: Path) -> Path:
    """The ``.pkl`` weights and ``config.yaml`` of one detectron2 run (a ``det_voc`` trial, a ``det_coco`` run) in
    ``trial_dir``; returns the config path (``values_of(weights)`` gives the config dict for those weights)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    weights = trial_dir / "backbone_detectron2.pkl"
    payload = to_detectron2(trunk)
    atomic_write(weights, lambda handle: pickle.dump(payload, handle, protocol=4), "wb")
    return atomic_write_text(trial_dir / "config.yaml", yaml.safe_dump(values_of(weights), sort_keys=False))


def train_on_detectron2(backbone: nn.Module, folder: Path, values_of: Callable[[Path, int], dict], module: str,
                        arguments: list[str], env: dict[str, str], *, resume: bool) -> dict[str, Any]:
    """One detectron2 run of either detection runner: the trunk's export and the config (``values_of(weights,
    gpus)``) in ``folder``, then ``python -m module --config-file ... --num-gpus N [--resume] arguments`` (a
    train_net on detectron2's own launcher, one process per visible GPU) in a subprocess with ``env`` added.
    ``resume``: continue from the ``last_checkpoint`` of detectron2's output folder (:func:`resume_point`), else
    train from the exported weights. Returns the record fields that say how it ran; a non-zero exit is a one-line
    error."""
    gpus = torch.cuda.device_count()
    config = write_inputs(trunk_state_dict(backbone), lambda weights: values_of(weights, gpus), folder)
    command = [sys.executable, "-m", module, "--config-file", str(config), "--num-gpus", str(gpus),
               *(["--resume"] if resume else []), *arguments]
    done = subprocess.run(command, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"detectron2 training failed (exit {done.returncode}): {' '.join(command)}")
    return {"norm": "SyncBN" if gpus > 1 else "BN", "detectron2_config": str(config), "detectron2_gpus": gpus,
            "loss_plot": None}


def train_net(args: argparse.Namespace, evaluator_class: type, edit_config: Callable[[Any], None]) -> None:
    """detectron2's ``train_net`` body, in each launched process: the config file (``edit_config`` changes it before
    it is frozen), ``default_setup``, ``DefaultTrainer`` (resumed from its output folder, else ``MODEL.WEIGHTS``),
    training and the final evaluation by ``evaluator_class(dataset_name)``, which writes the results files."""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer, default_setup

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return evaluator_class(dataset_name)

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    edit_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


def launch_main(main_fn: Callable[[argparse.Namespace], None], add_arguments: Callable[[Any], None]) -> None:
    """detectron2's command line (``--config-file``, ``--num-gpus``, ``--resume``, ...) plus ``add_arguments``, then
    detectron2's ``launch`` of ``main_fn`` (one process per GPU; in this process without GPUs)."""
    from detectron2.engine import default_argument_parser, launch

    parser = default_argument_parser()
    add_arguments(parser)
    args = parser.parse_args()
    launch(main_fn, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
