"""The README's Python API block runs as written, and the objects it builds are trainer tasks."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_training_step_runs_and_moves_student_and_adapter() -> None:
    from segdistill.engine.task import SupervisedTask, Task

    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(python_api_block(), str(README), "exec"), scope)  # noqa: S102 - our own README
    distiller, out = scope["distiller"], scope["out"]
    assert isinstance(distiller, Task) and isinstance(SupervisedTask(scope["student"]), Task)
    assert torch.isfinite(out.total) and set(out.own_losses) == {"apd_teacher_ce"}
    assert all(p.grad is None for p in scope["teacher"].parameters())
    assert any(p.grad is not None for p in scope["student"].parameters())
    (step,) = distiller.own_steps()
    assert step.term == "apd_teacher_ce" and not step.after_student and step.optimizer.state  # Adam stepped


def test_readme_methods_table_lists_every_method_in_order() -> None:
    from segdistill.base.method_options import METHOD_NAMES

    text = README.read_text(encoding="utf-8")
    table = text[text.index("| method | module(s) |") :].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert tuple(rows) == METHOD_NAMES
