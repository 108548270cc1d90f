from __future__ import annotations

import sys
from pathlib import Path

# Subprocess tests serve `tests.runtime.workbench:Workbench`: the repo root must be importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
