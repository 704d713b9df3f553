"""Checkers for the notebooks' code exercises.

Each notebook has cells where you write one piece of the method yourself (a loss, a mask, an
advantage). Below the stub, `check_<name>(your_function)` runs it on a few reference cases and
either says that every case passes or names the case that failed, with the expected value against
what your function returned and a hint. The same cases run against the library in the test suite
(tests/test_exercises.py), which also shows that each checker catches a plausible wrong answer.

A stub that still raises `NotImplementedError` (or returns None) is reported as not done yet, so Run
All goes on; the notebook continues with the library's version either way. Each exercise's
solution is in the collapsed cell below it: `exercises.check_reward_loss(my_reward_loss)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rlhf_edu.exercise_cases import CASES, Case


class ExerciseFailed(AssertionError):
    """A learner's function gave a wrong answer on a reference case."""


class Verdict:
    """What a check returns: true when every case passed. It has printed its verdict: no display."""

    def __init__(self, passed: bool):
        self.passed = passed

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        pass


def _as_numbers(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().tolist()
    if hasattr(x, "tolist"):  # numpy
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return type(x)(_as_numbers(v) for v in x)
    return float(x)


def _close(got, expected, tol: float) -> bool:
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(got, (tuple, list))
            and len(got) == len(expected)
            and all(_close(g, e, tol) for g, e in zip(got, expected))
        )
    if isinstance(got, (tuple, list)):
        return False
    if math.isinf(expected) or math.isinf(got):
        return got == expected
    return abs(got - expected) <= tol * (1 + abs(expected))


def _show(x) -> str:
    if isinstance(x, (list, tuple)):
        inner = ", ".join(_show(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    return f"{x:.6g}"


def run_cases(name: str, fn: Callable, cases: list[Case], tol: float = 1e-4) -> Verdict:
    """Run `fn` on every case. A true Verdict when all pass; a false one (with a printed note) when `fn`
    is still a stub; raises ExerciseFailed naming the first case that fails."""
    for case in cases:
        try:
            got = fn(*case.args())
        except NotImplementedError:
            print(f"{name}: not done yet. Fill in the function above, or open the solution below.")
            return Verdict(False)
        except Exception as err:  # the learner's code failed on this case: say which, and how
            hint = f"\n  hint: {case.hint}" if case.hint else ""
            raise ExerciseFailed(f"{name}: case '{case.name}' raised {type(err).__name__}: {err}{hint}") from err
        if got is None:
            print(f"{name}: not done yet (the function returned None). Fill it in, or open the solution below.")
            return Verdict(False)
        try:
            numbers = _as_numbers(got)
        except (TypeError, ValueError) as err:
            raise ExerciseFailed(f"{name}: case '{case.name}': could not read the result {got!r} ({err})") from None
        if not _close(numbers, case.expected, tol):
            message = (
                f"{name}: case '{case.name}' failed.\n  expected {_show(case.expected)}\n  got      {_show(numbers)}"
            )
            raise ExerciseFailed(message + (f"\n  hint: {case.hint}" if case.hint else ""))
    print(f"{name}: all {len(cases)} cases pass.")
    return Verdict(True)


def _checker(name: str):
    def check(fn: Callable) -> Verdict:
        return run_cases(name, fn, CASES[name])

    check.__name__ = f"check_{name}"
    check.__doc__ = f"Run the reference cases of `{name}` on your function; raises ExerciseFailed naming a failed case."
    return check


CHECKS = {name: _checker(name) for name in CASES}
globals().update({f"check_{name}": check for name, check in CHECKS.items()})
