"""The long fuzzing run: tests/fuzzing.py over one backend, with more messages per RPC than CI affords.

    python benchmarks/fuzz.py local-store --per-rpc 2000 --seed 1
    python benchmarks/fuzz.py piper --show TTSStream 55     # one request of a run again, to reproduce it

Run it with the Python of the backend's test environment (`.nox/tests-<backend>/bin/python`, or a
`bench-<backend>` session's): what it fuzzes, the model and a valid seed request per RPC, is the
backend's CI fuzzing target (`target()` in tests/<backend>/test_fuzz.py). Prints the counts by status,
per RPC and in all, the first examples of each finding, peak RSS against the backend's bound and the
time; exits 1 when a check fails (see tests/fuzzing.py's CHECKS), known bugs included.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the targets live in the tests

from tests import fuzzing  # noqa: E402 (after the path above)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("backend", help="as `localfleet serve` names it, e.g. local-store")
    parser.add_argument("--per-rpc", type=int, default=2000, help="messages per RPC (control RPCs fewer)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds each call may take")
    parser.add_argument("--folder", type=Path, help="the folder requests may use (default: a new one)")
    parser.add_argument("--show", nargs=2, metavar=("RPC", "N"), help="print case N of RPC and stop")
    parser.add_argument("--verbose", action="store_true", help="the first examples of every status")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix=f"fuzz-{args.backend}-"))
    target = dataclasses.replace(
        _module(args.backend).target(folder, args.per_rpc), seed=args.seed, deadline=args.deadline
    )
    if args.show:
        case = fuzzing.replay(target, args.show[0], int(args.show[1]))
        print(f"{case.rpc} {case.origin}: {case.shown}\nbody ({len(case.body)} bytes): {case.body!r}")
        return 0
    print(f"fuzzing {args.backend}: {args.per_rpc} per RPC, seed {args.seed}, folder {folder}", flush=True)
    report = fuzzing.run(target, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    print(report.summary())
    if args.verbose:
        for status, found in sorted(report.examples.items()):
            print(f"{status}:", *(f"  {finding}" for finding in found), sep="\n")
    failed = [check for check in fuzzing.CHECKS if report.failed(check)]
    print("checks:", ", ".join(f"{c} {'FAILED' if c in failed else 'ok'}" for c in fuzzing.CHECKS))
    return 1 if failed else 0


def _module(backend: str) -> Any:
    """The backend's CI fuzzing module (it imports pytest: a test environment has it)."""
    return importlib.import_module(f"tests.{backend.replace('-', '_')}.test_fuzz")


if __name__ == "__main__":
    sys.exit(main())
