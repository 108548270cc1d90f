"""`localfleet call ADDR COMMAND ...`: talk to a running backend by hand, with readable output and errors.

One subcommand per RPC a person calls: health and admin here, the stores-* commands of local-store, and
the inference commands (predict, embed, ...) in `localfleet.cli.inference`. Every one takes `--token` and
`--timeout`; a gRPC error is one line on stderr (`error: STATUS: message`) and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from grpclib.exceptions import GRPCError, StreamTerminatedError

from localfleet.cli import inference

if TYPE_CHECKING:
    from localfleet.client import Client

#: a command: (connected client, parsed arguments, timeout in seconds) -> exit status
Handler = Callable[["Client", argparse.Namespace, float], Awaitable[int]]

#: seconds a call may take unless --timeout says otherwise (inference commands set their own)
ADMIN_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    token_help = "bearer token (default: $LOCALAI_GRPC_AUTH_TOKEN)"
    timeout_help = f"seconds (default: {ADMIN_TIMEOUT:g}, or {inference.TIMEOUT:g} for inference commands)"
    parser.add_argument("addr", help="HOST:PORT of the backend")
    parser.add_argument("--token", default=os.environ.get("LOCALAI_GRPC_AUTH_TOKEN"), help=token_help)
    parser.add_argument("--timeout", type=float, default=None, help=timeout_help)
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--token", default=argparse.SUPPRESS, help=token_help)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=timeout_help)
    sub = parser.add_subparsers(dest="rpc", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, what: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=what, description=what)
        cmd.set_defaults(handler=handler, default_timeout=ADMIN_TIMEOUT)
        return cmd

    command("health", _health, "Health: prints OK (exit 0) or not OK (exit 1)")
    command("ready", _ready, "grpc.health.v1 readiness: SERVING (exit 0) or NOT_SERVING (exit 1)")
    command("status", _status, "Status: state and memory")
    load = command("load", _load, "LoadModel: load or replace the model")
    load.add_argument("model", nargs="?", help="the model (e.g. store://docs, all-MiniLM-L6-v2)")
    load.add_argument("--option", action="append", default=[], metavar="KEY:VALUE", help="load option")
    command("free", _free, "Free: unload the model and give its memory back")
    key_help = "a key as a JSON list of floats, repeatable"
    for name, handler, what in (
        ("stores-set", _stores_set, "StoresSet: store a --value under each --key"),
        ("stores-get", _stores_get, "StoresGet: the values of the keys found"),
        ("stores-delete", _stores_delete, "StoresDelete: delete the keys"),
        ("stores-find", _stores_find, "StoresFind: the --top-k nearest keys by cosine similarity"),
    ):
        cmd = command(name, handler, what)
        cmd.add_argument("--key", action="append", default=[], metavar="JSON", help=key_help)
        if name == "stores-set":
            cmd.add_argument("--value", action="append", default=[], help="a value for each --key")
        if name == "stores-find":
            cmd.add_argument("--top-k", type=int, default=5, help="how many neighbours (default: 5)")
    inference.add_commands(command)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_call(args))
    except GRPCError as exc:
        print(f"error: {exc.status.name}: {exc.message}", file=sys.stderr)
    except StreamTerminatedError as exc:
        print(f"error: connection to {args.addr} lost: {exc}", file=sys.stderr)
    except TimeoutError:  # grpclib's deadline, or the connect timing out
        limit = args.timeout if args.timeout is not None else args.default_timeout
        print(f"error: {args.addr} did not answer within {limit:g} s (--timeout)", file=sys.stderr)
    except BrokenPipeError:  # the output's reader (e.g. `| head`) went away: nothing left to tell
        return 0
    except OSError as exc:
        print(f"error: cannot reach {args.addr}: {exc or type(exc).__name__}", file=sys.stderr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 1


async def _call(args: argparse.Namespace) -> int:
    from localfleet.client import connect

    handler: Handler = args.handler
    timeout = args.timeout if args.timeout is not None else args.default_timeout
    async with connect(args.addr, args.token) as client:
        return await handler(client, args, timeout)


async def _health(client: Client, args: argparse.Namespace, timeout: float) -> int:
    ok = await client.healthy(timeout)
    print("OK" if ok else "not OK")
    return 0 if ok else 1


async def _ready(client: Client, args: argparse.Namespace, timeout: float) -> int:
    ready = await client.ready(timeout)
    print("SERVING" if ready else "NOT_SERVING")
    return 0 if ready else 1


async def _status(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    status = await client.backend.Status(pb.HealthMessage(), metadata=client.metadata, timeout=timeout)
    print(f"state: {pb.StatusResponse.State.Name(status.state)}")
    print(f"memory: {_size(status.memory.total)}")
    for key, value in sorted(status.memory.breakdown.items()):
        print(f"  {key}: {_size(value)}")
    return 0


async def _load(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    if not args.model:
        raise ValueError("load needs a model, e.g. `localfleet call ADDR load store://docs`")
    request = pb.ModelOptions(Model=args.model, Options=args.option)
    return result(await client.backend.LoadModel(request, metadata=client.metadata, timeout=timeout))


async def _free(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    return result(await client.backend.Free(pb.HealthMessage(), metadata=client.metadata, timeout=timeout))


async def _stores_set(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    keys = _keys(args)
    if len(args.value) != len(keys):
        raise ValueError(
            f"stores-set needs one --value per --key ({len(keys)} keys, {len(args.value)} values)"
        )
    values = [pb.StoresValue(Bytes=v.encode()) for v in args.value]
    request = pb.StoresSetOptions(Keys=keys, Values=values)
    return result(await client.backend.StoresSet(request, metadata=client.metadata, timeout=timeout))


async def _stores_delete(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.StoresDeleteOptions(Keys=_keys(args))
    return result(await client.backend.StoresDelete(request, metadata=client.metadata, timeout=timeout))


async def _stores_get(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.StoresGetOptions(Keys=_keys(args))
    got = await client.backend.StoresGet(request, metadata=client.metadata, timeout=timeout)
    for got_key, got_value in zip(got.Keys, got.Values, strict=True):
        print(f"{_show_key(got_key.Floats)}  {_show(got_value.Bytes)}")
    return 0


async def _stores_find(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    keys = _keys(args)
    if len(keys) != 1:
        raise ValueError("stores-find needs exactly one --key")
    request = pb.StoresFindOptions(Key=keys[0], TopK=args.top_k)
    found = await client.backend.StoresFind(request, metadata=client.metadata, timeout=timeout)
    for found_key, found_value, sim in zip(found.Keys, found.Values, found.Similarities, strict=True):
        print(f"{sim:+.4f}  {_show_key(found_key.Floats)}  {_show(found_value.Bytes)}")
    return 0


def result(reply: Any) -> int:
    """A `Result` reply: `ok: message` (exit 0) or `failed: message` (exit 1)."""
    print(("ok: " if reply.success else "failed: ") + reply.message)
    return 0 if reply.success else 1


def _keys(args: argparse.Namespace) -> list[Any]:
    from localfleet.proto import backend_pb2 as pb

    return [pb.StoresKey(Floats=_floats(k)) for k in args.key]


def _floats(text: str) -> list[float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, list) or not all(isinstance(x, int | float) for x in data):
        raise ValueError(f"--key {text!r} must be a JSON list of numbers, e.g. '[0.1, 0.2, 0.3]'")
    return [float(x) for x in data]


def _show_key(floats: Any) -> str:
    items = [f"{x:g}" for x in list(floats)[:6]]
    return "[" + ", ".join(items) + (", ..." if len(floats) > 6 else "") + "]"


def _show(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} B"
