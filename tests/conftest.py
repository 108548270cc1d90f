from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Subprocess tests serve `tests.runtime.workbench:Workbench`: the repo root must be importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- the fuzzer (tests/fuzzing.py): each backend's tests/<name>/test_fuzz.py defines `target` and
# optionally `BUGS` (check -> known bug); the run and the per-check parameters come from here.
if TYPE_CHECKING:
    from tests.fuzzing import Report


def pytest_generate_tests(metafunc: Any) -> None:
    if "fuzz_check" in metafunc.fixturenames:
        from tests import fuzzing

        metafunc.parametrize("fuzz_check", fuzzing.params(getattr(metafunc.module, "BUGS", None)))


@pytest.fixture(scope="module")
def fuzz_report(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Report:
    from tests import fuzzing

    return fuzzing.run(request.module.target(tmp_path_factory.mktemp("fuzz")))
