"""Progress output reads well where users run it (issue 11 item 8): a bar on a terminal, plain lines off one."""

from __future__ import annotations

import io
import re

import pytest

from byol_bench.runlog import Progress, progress


class FakeClock:
    """Monotonic seconds that advance only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
    monkeypatch.delenv("BYOL_BENCH_NO_PROGRESS", raising=False)


def _run(total: int, seconds_per_step: float, stream: io.StringIO | None = None, **kwargs) -> str:
    stream = stream if stream is not None else io.StringIO()
    clock = FakeClock()
    with Progress(total, "byol", unit="step", stream=stream, clock=clock, **kwargs) as bar:
        for step in range(1, total + 1):
            clock.now += seconds_per_step
            if step % 10 == 0:
                bar.set_postfix(loss=f"{3.21:.2f}", lr="0.0375", **{"img/s": "25.1"})
            bar.update()
    return stream.getvalue()


def test_off_terminal_plain_lines_bounded_with_postfix():
    # A 24-hour loop of 100,000 steps: a line per 5 % plus a heartbeat per 30 min at most, no carriage returns.
    out = _run(100_000, 0.864)
    lines = out.splitlines()
    assert "\r" not in out and "\x1b" not in out
    assert 20 <= len(lines) <= 22 + 24 * 2
    # The first line after a minute (early word of the rate), then heartbeats every 30 min between the 5 % lines.
    assert re.fullmatch(r"byol: step 70/100000 \(0%\) loss=3\.21 lr=0\.0375 img/s=25\.1 elapsed 0:01:00 "
                        r"eta 23:5\d:\d\d", lines[0]), lines[0]
    assert re.match(r"byol: step 215\d/100000 \(2%\) loss=3\.21 .* elapsed 0:31:0", lines[1]), lines[1]
    assert re.fullmatch(r"byol: step 5000/100000 \(5%\) loss=3\.21 lr=0\.0375 img/s=25\.1 elapsed 1:1[12]:\d\d "
                        r"eta 22:4[78]:\d\d", lines[3]), lines[:4]
    assert lines[-1].startswith("byol: step 100000/100000 (100%) loss=3.21") and "eta" not in lines[-1]


def test_fast_loops_are_throttled_and_slow_ones_get_every_few_percent():
    # 1,000 steps in 4 s: never two lines within 10 s, so only the final state.
    assert _run(1000, 1 / 256).splitlines() == ["byol: step 1000/1000 (100%) loss=3.21 lr=0.0375 img/s=25.1 elapsed "
                                                "0:00:03"]
    # 272 steps of 1 s (the tiny pretraining): every 5 % (13.6 steps).
    lines = _run(272, 1.0).splitlines()
    assert [int(re.search(r"\((\d+)%\)", line)[1]) for line in lines] == list(range(5, 101, 5))
    assert lines[0].startswith("byol: step 14/272 (5%) loss=3.21") and lines[0].endswith("elapsed 0:00:14 eta 0:04:18")


def test_stopped_early_prints_where_it_stopped_and_resumes_count_from_initial():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(272, "byol", initial=100, unit="step", stream=stream, clock=clock) as bar:
        for _ in range(3):
            clock.now += 2.0
            bar.update()
    assert stream.getvalue() == "byol: step 103/272 (37%) elapsed 0:00:06 eta 0:05:38\n"


def test_iterable_helper_unknown_total_and_silenced(monkeypatch, capsys):
    assert list(progress(range(7), desc="features test")) == list(range(7))
    assert capsys.readouterr().err == "features test: 7/7 (100%) elapsed 0:00:00\n"
    assert list(progress(iter(range(3)), desc="stream")) == [0, 1, 2]
    assert capsys.readouterr().err == "stream: 3 elapsed 0:00:00\n"
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")
    assert _run(500, 1.0) == "" and _run(500, 1.0, Terminal()) == ""


def test_on_a_terminal_a_tqdm_bar_as_before():
    out = _run(50, 1.0, Terminal())
    assert "\r" in out and "byol: 100%" in out and "img/s=25.1" in out


def test_other_ranks_print_nothing(monkeypatch):
    monkeypatch.setattr("byol_bench.dist.is_main", lambda: False)
    assert _run(500, 1.0) == "" and _run(500, 1.0, Terminal()) == ""
