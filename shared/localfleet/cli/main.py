"""`localfleet` entry point. Each subcommand lives in its own module, imported only when chosen."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localfleet", description="LocalAI-compatible gRPC backends")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve one backend on --addr")
    lister = sub.add_parser("list", help="list the backends and whether their engine is installed")
    call = sub.add_parser("call", help="call a running backend: health, load, predict, embed, tts, ...")
    up = sub.add_parser("up", help="start several backends on free ports and print LocalAI's settings line")

    from localfleet.cli import serve as serve_cmd

    serve_cmd.add_arguments(serve)
    lister.set_defaults(run=_list)
    from localfleet.cli import call as call_cmd

    call_cmd.add_arguments(call)
    from localfleet.cli import up as up_cmd

    up_cmd.add_arguments(up)
    args = parser.parse_args(argv)
    return int(args.run(args))


def _list(args: argparse.Namespace) -> int:
    from localfleet import catalog

    rows = []
    for name, entry in sorted(catalog.entries().items()):
        missing = entry.missing()
        state = "installed" if not missing else "missing: " + ", ".join(missing)
        rows.append((name, state, f"pip install 'localfleet[{name}]'" if missing else ""))
    width = max((len(r[0]) for r in rows), default=7)
    print(f"{'BACKEND':<{width}}  ENGINE")
    for name, state, hint in rows:
        print(f"{name:<{width}}  {state}{'  (' + hint + ')' if hint else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
