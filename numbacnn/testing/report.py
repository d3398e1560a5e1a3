"""Running the checks: ``check_layer``, its ``KitReport``, and ``parametrize_with_checks`` for pytest."""

from __future__ import annotations

from typing import Iterable

from .case import CHECKS, LayerCase, _skip_exceptions


class KitReport(dict):
    """What ``check_layer`` found: ``{check: "passed" | "skipped: <reason>"}`` in the order the checks ran, with
    the examples each passed check ran (``examples``) and a one-line ``summary()``."""

    def __init__(self, case_name: str):
        super().__init__()
        self.case_name = case_name
        self.examples: dict[str, int] = {}

    @property
    def passed(self) -> list[str]:
        """The checks that passed."""
        return [name for name, result in self.items() if result == "passed"]

    @property
    def skipped(self) -> dict[str, str]:
        """Check name -> why it was skipped."""
        return {name: result.removeprefix("skipped: ") for name, result in self.items() if result != "passed"}

    def summary(self) -> str:
        """E.g. "relu: 6 checks passed (96 examples), 2 skipped (state: the layer has no state; devices: ...)"."""
        passed, skipped = self.passed, self.skipped
        text = (f"{self.case_name}: {len(passed)} check{'' if len(passed) == 1 else 's'} passed "
                f"({sum(self.examples.get(name, 0) for name in passed)} examples)")
        if skipped:
            # The reasons repeat "<case>: <check> check skipped: " where the kit raised them; once is enough.
            reasons = [f"{name}: {_first_sentence(reason.removeprefix(f'{self.case_name}: {name} check skipped: '))}"
                       for name, reason in skipped.items()]
            text += f", {len(skipped)} skipped ({'; '.join(reasons)})"
        return text


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".")


class NothingChecked(AssertionError):
    """``check_layer`` ran no check: every one was skipped. ``report`` holds the ``KitReport`` with the reasons."""

    def __init__(self, report: KitReport):
        self.report = report
        super().__init__(
            f"Nothing was checked: {report.summary()}. A run that checks nothing is not a pass: run checks that "
            f"apply to this layer here (devices needs a CUDA GPU, or NUMBA_ENABLE_CUDASIM=1)."
        )


def _selected(checks: Iterable[str] | None) -> list[str]:
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown checks {unknown}; the checks are {list(CHECKS)}.")
    return names


def check_layer(case: LayerCase, checks: Iterable[str] | None = None) -> KitReport:
    """Runs the checks (default: all) on ``case``.

    Returns a ``KitReport``, ``{check name: "passed" or "skipped: <reason>"}`` with counts; raises
    ``AssertionError`` naming every check that failed, with each one's message, and ``NothingChecked`` when
    every check was skipped.
    """
    report, failures = KitReport(case.name), []
    for name in _selected(checks):
        try:
            examples = CHECKS[name](case)
        except _skip_exceptions() as skipped:
            report[name] = f"skipped: {getattr(skipped, 'msg', None) or skipped}"
        except AssertionError as error:
            failures.append(f"[{case.name}-{name}] {error}")
        else:
            report[name] = "passed"
            report.examples[name] = int(examples or 0)
    if failures:
        raise AssertionError(f"{len(failures)} check(s) failed for {case.name}:\n" + "\n".join(failures))
    if not report.passed:
        raise NothingChecked(report)
    return report


def parametrize_with_checks(cases: Iterable[LayerCase], checks: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize("case, check", ...)`` over every (case, check) pair, with ids like
    ``conv2d-gradients``; the test body is ``check(case)``.

    A check that does not apply (``devices`` without CUDA, ``state`` for a layer without state, a check named
    in ``LayerCase.skip``) is a skipped test, counted in pytest's summary line; ``pytest -rs`` lists why.
    """
    import pytest

    names = _selected(checks)
    params = [pytest.param(case, CHECKS[name], id=f"{case.name}-{name}") for case in cases for name in names]
    return pytest.mark.parametrize("case, check", params)
