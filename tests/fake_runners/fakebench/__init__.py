"""Stand-in protocols for the suite's tests (``BYOL_BENCH_SUITE_PROTOCOLS=fakebench:PROTOCOLS``): one that writes a
record, one that fails, one whose module does not exist."""

from byol_bench.protocols import Protocol


def _stand_in(name: str) -> Protocol:
    return Protocol(name, f"fakebench.{name}", "fakebench.ok", full=(("tiny", 1),), tiny=("tiny",), tables=(),
                    headline=("svm", "SVM mAP"))


PROTOCOLS = tuple(_stand_in(name) for name in ("broken", "missing", "ok"))
