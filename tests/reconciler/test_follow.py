"""`logs --follow` by byte offset: repeated lines are new lines, nothing old is reprinted,
rotation and truncation are followed, and a replaced replica's log takes over."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.cli.follow import FileFollower, follow_lines


def test_repeated_lines_are_new_output_and_partial_lines_wait(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_text("old 1\nold 2\n")
    f = FileFollower(log)
    assert f.read() == []  # starts at the end: history was printed by `-n`
    with log.open("a") as out:
        out.write("same\nsame\nhalf")
    assert f.read() == ["same", "same"]
    with log.open("a") as out:
        out.write(" line\nsame\n")
    assert f.read() == ["half line", "same"]
    assert f.read() == []


def test_rotation_reads_the_rest_of_the_old_file_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_text("a\n")
    f = FileFollower(log)
    with log.open("a") as out:
        out.write("b\n")  # written just before the rotation, not read yet
    os.replace(log, tmp_path / "replica.log.1")
    log.write_text("c\nd\n")
    assert f.read() == ["b", "c", "d"]


def test_truncation_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_text("a long first line\n")
    f = FileFollower(log)
    with log.open("w") as out:
        out.write("x\n")
    assert f.read() == ["x"]


def test_a_replaced_replica_is_followed_from_its_start(tmp_path: Path) -> None:
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    one.write_text("boot\n")
    state = {"replica": ("web-aaaa-0", one)}
    emitted: list[str] = []
    steps = iter(range(4))

    def tick(_: float) -> None:
        step = next(steps)
        if step == 0:
            with one.open("a") as out:
                out.write("serving\n")
        elif step == 1:
            with one.open("a") as out:
                out.write("last words\n")
            two.write_text("new boot\n")
            state["replica"] = ("web-bbbb-0", two)
        elif step == 2:
            with two.open("a") as out:
                out.write("new serving\n")

    follow_lines(lambda: state["replica"], emitted.append, lambda: len(emitted) >= 5, tick, interval=0)
    assert emitted == [
        "serving",
        "last words",
        "--- web-aaaa-0 was replaced; following web-bbbb-0 ---",
        "new boot",
        "new serving",
    ]
