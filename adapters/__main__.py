"""Command line: ``python -m adapters inspect CKPT`` and ``python -m adapters convert IN OUT --to TARGET``.

Examples::

    python -m adapters inspect work_dirs/byol/latest.pth
    python -m adapters convert moco_v2_800ep.pth.tar r50_moco.pkl --to detectron2
    python -m adapters convert byol.pth r50_target.pth --to mmseg --encoder target
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence

from adapters.export import EXPORTS, write_export
from adapters.intake import ENCODERS, FORMATS, available_encoders, to_torchvision
from adapters.loading import read_checkpoint
from byol_bench.checkpoint import sha256_file
from byol_bench.cli import main_guard


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adapters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--from", dest="fmt", default="auto", choices=["auto", *FORMATS],
                        help="checkpoint layout; auto-detected by default (docs/ADAPTERS.md lists them)")
    common.add_argument("--encoder", default="online", choices=ENCODERS,
                        help="online: the encoder the benchmarks evaluate; target: the momentum/EMA encoder")
    common.add_argument("--arch", default=None,
                        help="expected ResNet (resnet18..resnet152, timm:<name>); inferred from the weights if unset")
    inspect = sub.add_parser("inspect", parents=[common], help="show format, architecture, kept and dropped keys")
    inspect.add_argument("ckpt")
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")
    convert = sub.add_parser("convert", parents=[common], help="write the trunk for another library")
    convert.add_argument("src")
    convert.add_argument("out", help="output file (.pkl for detectron2, which also gets <out>.yaml)")
    convert.add_argument("--to", required=True, choices=list(EXPORTS), help="target library")
    return parser


def _stage(key: str) -> str:
    first = key.split(".")[0]
    return first if first.startswith("layer") else "stem"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run ``inspect`` or ``convert``; errors propagate (``main_guard`` formats them)."""
    args = _parser().parse_args(argv)
    path = args.ckpt if args.command == "inspect" else args.src
    ckpt = read_checkpoint(path)
    state_dict, report = to_torchvision(ckpt, fmt=args.fmt, encoder=args.encoder, arch=args.arch, source=path)
    report = dataclasses.replace(report, sha256=sha256_file(path))
    if args.command == "convert":
        for written in write_export(state_dict, report, args.out, args.to):
            print(f"wrote {written}")
        print(f"{report.format} ({report.encoder} encoder, {report.arch}): kept {report.tensors} tensors, "
              f"dropped {sum(report.dropped.values())} ({', '.join(report.dropped) or 'nothing'})")
        return
    kept = dict(Counter(_stage(key) for key in state_dict))
    encoders = available_encoders(ckpt, report.format)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "kept": kept, "encoders": encoders}, indent=2))
        return
    rows = {
        "file": path,
        "sha256": report.sha256,
        "format": f"{report.format}: {FORMATS[report.format].description}",
        "encoder": f"{report.encoder} (in file: {', '.join(encoders)})",
        "arch": report.arch,
        "kept": f"{report.tensors} tensors: " + ", ".join(f"{name} {count}" for name, count in kept.items()),
        "dropped": ", ".join(f"{name} {count}" for name, count in report.dropped.items()) or "nothing",
        "filled": f"{report.filled_num_batches_tracked} BN num_batches_tracked counters (absent from the file)",
    }
    for name, value in rows.items():
        print(f"{name:<8} {value}")


if __name__ == "__main__":
    main_guard(main)
