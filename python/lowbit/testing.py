"""``lowbit.testing``: quantization-tolerance checks for your own CI, as a pytest plugin.

Installed with lowbit (entry point ``pytest11``), so its fixtures are there in
any test suite::

    def test_my_model_still_works(lowbit_validate, lowbit_tolerances):
        report = lowbit_validate("out/my-model-q4", baseline="checkpoints/my-model")
        assert_within_tolerance(report, lowbit_tolerances)

``lowbit_tolerances`` reads the TOML file given by ``--lowbit-tolerances`` or
the ini option ``lowbit_tolerances`` (defaults otherwise); ``lowbit_validate``
runs ``lowbit.eval.validate.validate`` with the baseline logits cached in pytest's
cache directory, so reruns do not run PyTorch again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lowbit.eval.tolerances import Tolerances, load_tolerances, violations

if TYPE_CHECKING:
    # Imported where used: pytest loads this plugin in every test run of a
    # project that has lowbit installed, and validate pulls in NumPy and the
    # runtime.
    from lowbit.eval.validate import ValidationReport

__all__ = ["assert_within_tolerance"]


def assert_within_tolerance(
    report: ValidationReport | dict[str, Any],
    tolerances: Tolerances | str | Path | None = None,
) -> None:
    """AssertionError listing every figure of ``report`` outside ``tolerances``
    (a Tolerances, a TOML path with the report's preset applied, or the defaults)."""
    from lowbit.eval.validate import ValidationReport

    data = report.as_dict() if isinstance(report, ValidationReport) else report
    if not isinstance(tolerances, Tolerances):
        tolerances = load_tolerances(tolerances, preset=data.get("preset"))
    found = violations(data, tolerances)
    if found:
        raise AssertionError(
            f"{data.get('path', 'model')}: {len(found)} tolerance(s) exceeded:\n  "
            + "\n  ".join(found)
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lowbit")
    group.addoption(
        "--lowbit-tolerances", default=None, help="TOML tolerances file for lowbit_tolerances"
    )
    parser.addini("lowbit_tolerances", "TOML tolerances file for lowbit_tolerances", default="")


@pytest.fixture(scope="session")
def lowbit_tolerances_path(pytestconfig: pytest.Config) -> Path | None:
    value = pytestconfig.getoption("--lowbit-tolerances") or pytestconfig.getini(
        "lowbit_tolerances"
    )
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(pytestconfig.rootpath) / path


@pytest.fixture(scope="session")
def lowbit_tolerances(lowbit_tolerances_path: Path | None) -> Tolerances:
    """The tolerances file's global limits (presets apply in assert_within_tolerance
    when it is given the path instead)."""
    return load_tolerances(lowbit_tolerances_path)


@pytest.fixture(scope="session")
def lowbit_validate(pytestconfig: pytest.Config) -> Callable[..., ValidationReport]:
    """validate(model_dir, baseline, **options) with the baseline logits cached
    in pytest's cache directory."""
    # No cache with `-p no:cacheprovider`: then every run computes the baseline.
    pytest_cache = getattr(pytestconfig, "cache", None)
    cache = pytest_cache.mkdir("lowbit-baselines") if pytest_cache else None

    def run(model_dir: str | Path, baseline: str | Path, **options: Any) -> ValidationReport:
        from lowbit.eval.validate import validate

        options.setdefault("baseline_cache", cache)
        return validate(model_dir, baseline, **options)

    return run
