"""Stand-in protocol runner for the run_all tests: the real runners' scaffold, with a constant result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from byol_bench import runlog
from byol_bench.cli import main_guard
from byol_bench.config import opt, parse_args
from byol_bench.scaffold import open_run

# The provenance's library versions import torchvision and scikit-learn: ~4 s of this stand-in's ~6 s per run, and
# run_all starts it five times in tests/test_run_all.py, which checks the orchestration and never reads them.
runlog.library_versions = lambda: {"fakebench": "not collected"}


@dataclass(frozen=True)
class FakeConfig:
    preset: str = opt("none", "preset name")
    ckpt: str = opt("", "checkpoint")
    data_root: str = opt("data", "data root", identity=False)
    out_dir: str = opt("out", "output folder", identity=False)
    device: Literal["auto", "cpu", "cuda"] = opt("cpu", "device", identity=False)
    tiny: bool = opt(True, "tiny sizes")
    rehearsal: bool = opt(False, "a rehearsal", identity="when_set")
    force: bool = opt(False, "redo", identity=False)


def run(cfg: FakeConfig) -> dict[str, float]:
    with open_run("voc07_svm", "voc07", cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        run.start()
        with open(Path(cfg.out_dir) / "runs.txt", "a") as handle:
            handle.write("ran\n")
        return run.finish({"svm": 42.0}, checkpoint={"format": "torchvision", "arch": "resnet18", "encoder": "online"},
                          seeds={}, batch_size_per_device=1)


if __name__ == "__main__":
    main_guard(lambda: run(parse_args(FakeConfig, preset_dir=Path(__file__).parents[1] / "configs")))
