"""Logging: every line in the process's one format, once, libraries' included."""

from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter: configure() changes process-wide logging state.
HUB_LIKE = """
import logging, sys
from localfleet import logs
logs.configure("INFO", "json", "probe")
# What huggingface_hub and transformers do at import: a handler of their own, propagation off.
library = logging.getLogger("huggingface_hub")
library.addHandler(logging.StreamHandler(sys.stderr))
library.propagate = False
logging.getLogger("huggingface_hub.file_download").warning("offline: no hub retries")
"""


def test_a_library_with_its_own_handler_logs_once_in_the_process_format() -> None:
    ran = subprocess.run([sys.executable, "-c", HUB_LIKE], capture_output=True, text=True, check=True)
    lines = [line for line in ran.stderr.splitlines() if "offline: no hub retries" in line]
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("{")
    assert '"logger": "huggingface_hub.file_download"' in lines[0]
