"""`localfleet install BACKEND... [--build-type T] [--into DIR]`: one environment per backend."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("localfleet.install")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backends", nargs="+", help="backends to install, e.g. local-store transformers")
    parser.add_argument(
        "--build-type",
        default="cpu",
        help="cpu (default), cublas12, hipblas, intel, vulkan or metal: the engine's accelerator build",
    )
    parser.add_argument(
        "--into",
        type=Path,
        help="make standalone backend folders DIR/<name>/ (run.sh + .venv) instead of the checkout's "
        "services/<name>/.venv; `localfleet up --backends-dir DIR` starts them",
    )
    parser.add_argument(
        "--no-models", action="store_true", help="leave out a backend's bundled start-up model package"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from localfleet import environments, logs
    from localfleet.matrix import matrix

    logs.configure("INFO", "text", "install")
    try:
        m = matrix()
        for name in args.backends:
            m.build(name, args.build_type)
    except (LookupError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    try:
        environments.install(
            args.backends, args.build_type, into=args.into and args.into.resolve(), models=not args.no_models
        )
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0
