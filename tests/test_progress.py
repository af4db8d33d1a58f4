"""Progress is one line per step: a loop's ticks are throttled to a few lines, and the deadline is still
checked at every one of them."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline import context
from pipeline.context import Deadline, StageContext
from pipeline.errors import JobCancelled


def _ctx(lines: list[tuple[float, str]], deadline: Deadline | None = None) -> StageContext:
    return StageContext("texture", deadline or Deadline(60.0), lambda stage, f, msg: lines.append((f, msg)))


def test_every_new_step_is_one_line_and_repeats_are_dropped() -> None:
    lines: list[tuple[float, str]] = []
    ctx = _ctx(lines)
    for f, message in [(0.0, "unwrapping UVs"), (0.2, "baking normal map"), (0.2, "baking normal map"),
                       (0.5, "packing maps"), (1.0, "done")]:
        ctx.report(f, message)
    assert [m for _, m in lines] == ["unwrapping UVs", "baking normal map", "packing maps", "done"]


def test_a_fast_loop_of_65_ticks_is_two_lines() -> None:
    """The AO bake's shape: the caller announces the step, the loop ticks 64 times, then reports its end."""
    lines: list[tuple[float, str]] = []
    ctx = _ctx(lines)
    ctx.report(0.7, "baking ambient occlusion")
    sub = dataclasses.replace(ctx, span=(0.7, 0.95))  # how texture.py hands a sub-range to bake_ao
    for i in range(64):
        sub.report(i / 64, "baking ambient occlusion", step=(i, 64))
    sub.report(1.0, "baking ambient occlusion", step=(64, 64))
    assert [m for _, m in lines] == ["baking ambient occlusion", "baking ambient occlusion 64/64"]
    assert lines[-1][0] == pytest.approx(0.95)


def test_a_slow_loop_reports_about_every_tenth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "LOOP_MIN_SECONDS", 0.0)  # as if every tick took longer than a second
    lines: list[tuple[float, str]] = []
    ctx = _ctx(lines)
    for i in range(100):
        ctx.report(i / 100, "sampling step", step=(i + 1, 100))
    messages = [m for _, m in lines]
    assert messages[0] == "sampling step 1/100" and messages[-1] == "sampling step 100/100"
    assert 10 <= len(messages) <= 12
    fractions = [f for f, _ in lines]
    assert fractions == sorted(fractions)


def test_the_deadline_is_checked_at_every_throttled_tick() -> None:
    lines: list[tuple[float, str]] = []
    deadline = Deadline(60.0)
    ctx = _ctx(lines, deadline)
    ctx.report(0.0, "baking ambient occlusion", step=(0, 64))
    ctx.report(0.01, "baking ambient occlusion", step=(1, 64))  # dropped, but still checked
    deadline.cancel()
    with pytest.raises(JobCancelled):
        ctx.report(0.02, "baking ambient occlusion", step=(2, 64))
    assert len(lines) == 1
