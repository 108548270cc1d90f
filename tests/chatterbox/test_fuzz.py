"""chatterbox under the fuzzer (tests/fuzzing.py) with no model loaded: every RPC, fixed seed.

No checkpoint is loaded: the only one that can be built here is full size (3.2 GB; a sentence takes
seconds to minutes on CPU), so the fuzzed requests meet LoadModel's refusals (paths, names, AudioPath,
the options' ranges) and a server with nothing loaded. Synthesis is fuzzed by hand in test_synthesis.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.service import CONTROL
from localfleet.settings import MiB
from localfleet_chatterbox.servicer import Chatterbox
from tests import fuzzing

PER_RPC = 40

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    unloaded = "no Chatterbox checkpoint can be built small enough to fuzz; requests meet no model"
    rpcs = fuzzing.served(Chatterbox)
    return fuzzing.Target(
        "chatterbox",
        rpcs,
        [],
        folder,
        rss_bound=400 * MiB,
        per_rpc=per_rpc,
        max_replies=2,
        unseeded={rpc: unloaded for rpc in rpcs if rpc not in CONTROL},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
