"""`localfleet` entry point. Each subcommand lives in its own module, imported only when chosen."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localfleet", description="LocalAI-compatible gRPC backends")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve one backend on --addr")
    lister = sub.add_parser("list", help="list the backends and where each is installed")
    installer = sub.add_parser("install", help="build backends' environments (one each, beside run.sh)")
    call = sub.add_parser("call", help="call a running backend: health, load, predict, embed, tts, ...")
    up = sub.add_parser("up", help="start several backends on free ports and print LocalAI's settings line")

    from localfleet.cli import serve as serve_cmd

    serve_cmd.add_arguments(serve, _after(argv, "serve"))
    lister.add_argument("--backends-dir", type=Path, help="folder of installed backend folders")
    lister.set_defaults(run=_list)
    from localfleet.cli import install as install_cmd

    install_cmd.add_arguments(installer)
    from localfleet.cli import call as call_cmd

    call_cmd.add_arguments(call)
    from localfleet.cli import up as up_cmd

    up_cmd.add_arguments(up)
    args = parser.parse_args(argv)
    return int(args.run(args))


def _after(argv: list[str] | None, command: str) -> list[str]:
    words = sys.argv[1:] if argv is None else argv
    return words[1:] if words[:1] == [command] else []


def _list(args: argparse.Namespace) -> int:
    from localfleet import environments

    backends_dir = args.backends_dir or environments.backends_dir_from_env()
    rows = [(name, *environments.describe(name, backends_dir)) for name in environments.known(backends_dir)]
    width = max((len(r[0]) for r in rows), default=7)
    print(f"{'BACKEND':<{width}}  STATE")
    for name, state, hint in rows:
        print(f"{name:<{width}}  {state}{'  (' + hint + ')' if hint else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
