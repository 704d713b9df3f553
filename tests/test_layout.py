"""The library's floors (docs/layout.md): stage modules never import another stage for plumbing,
nothing outside `rlhf_edu/course/` imports from it, and no module grows past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "rlhf_edu"
# One training loop each; a loop and its trainer (or a model and its training) form one stage.
STAGES = {
    "sft": "sft",
    "reward_training": "reward",
    "dpo": "dpo",
    "ppo_loop": "ppo",
    "ppo_trainer": "ppo",
    "grpo_loop": "grpo",
    "grpo_trainer": "grpo",
}


def imported_modules(path: Path) -> set[str]:
    """Every `rlhf_edu...` module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rlhf_edu")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf_edu"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def test_the_rule_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from rlhf_edu.course import yardstick\n")
    assert "rlhf_edu.course.yardstick" in imported_modules(module)


def test_no_stage_imports_another_stage():
    offenders = []
    for name, stage in STAGES.items():
        for module in imported_modules(LIBRARY / f"{name}.py"):
            other = module.removeprefix("rlhf_edu.")
            if other in STAGES and STAGES[other] != stage:
                offenders.append(f"{name} imports {other}")
    assert not offenders, offenders


def test_nothing_below_the_course_package_imports_it():
    offenders = [
        f"{path.relative_to(LIBRARY)} imports {module}"
        for path in library_files()
        if "course" not in path.relative_to(LIBRARY).parts
        for module in imported_modules(path)
        if module == "rlhf_edu.course" or module.startswith("rlhf_edu.course.")
    ]
    assert not offenders, offenders


def test_no_module_over_400_lines():
    long = {str(p.relative_to(LIBRARY)): n for p in library_files() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
