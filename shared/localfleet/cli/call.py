"""`localfleet call ADDR RPC ...`: talk to a running backend by hand, with readable output and errors."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Any

from grpclib.exceptions import GRPCError

_RPCS = (
    "health",
    "ready",
    "status",
    "load",
    "free",
    "stores-set",
    "stores-get",
    "stores-delete",
    "stores-find",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addr", help="HOST:PORT of the backend")
    parser.add_argument("rpc", choices=_RPCS, help="what to call")
    parser.add_argument("model", nargs="?", help="for load: the model (e.g. store://docs)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY:VALUE", help="load option")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="JSON",
        help="a key as a JSON list of floats, repeatable (stores-*)",
    )
    parser.add_argument("--value", action="append", default=[], help="a value for each --key (stores-set)")
    parser.add_argument("--top-k", type=int, default=5, help="stores-find: how many neighbours")
    parser.add_argument(
        "--token",
        default=os.environ.get("LOCALAI_GRPC_AUTH_TOKEN"),
        help="bearer token (default: $LOCALAI_GRPC_AUTH_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_call(args))
    except GRPCError as exc:
        print(f"error: {exc.status.name}: {exc.message}", file=sys.stderr)
    except (TimeoutError, OSError) as exc:
        print(f"error: cannot reach {args.addr}: {exc or type(exc).__name__}", file=sys.stderr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


async def _call(args: argparse.Namespace) -> int:
    from localfleet.client import connect
    from localfleet.proto import backend_pb2 as pb

    async with connect(args.addr, args.token) as client:
        stub, meta, timeout = client.backend, client.metadata, args.timeout
        if args.rpc == "health":
            ok = await client.healthy(timeout)
            print("OK" if ok else "not OK")
            return 0 if ok else 1
        if args.rpc == "ready":
            ready = await client.ready(timeout)
            print("SERVING" if ready else "NOT_SERVING")
            return 0 if ready else 1
        if args.rpc == "status":
            status = await stub.Status(pb.HealthMessage(), metadata=meta, timeout=timeout)
            print(f"state: {pb.StatusResponse.State.Name(status.state)}")
            print(f"memory: {_size(status.memory.total)}")
            for key, value in sorted(status.memory.breakdown.items()):
                print(f"  {key}: {_size(value)}")
            return 0
        if args.rpc == "load":
            if not args.model:
                raise ValueError("load needs a model, e.g. `localfleet call ADDR load store://docs`")
            result = await stub.LoadModel(
                pb.ModelOptions(Model=args.model, Options=args.option), metadata=meta, timeout=timeout
            )
            return _result(result)
        if args.rpc == "free":
            return _result(await stub.Free(pb.HealthMessage(), metadata=meta, timeout=timeout))
        keys = [pb.StoresKey(Floats=_floats(k)) for k in args.key]
        if args.rpc == "stores-set":
            if len(args.value) != len(keys):
                raise ValueError(
                    f"stores-set needs one --value per --key ({len(keys)} keys, {len(args.value)} values)"
                )
            values = [pb.StoresValue(Bytes=v.encode()) for v in args.value]
            return _result(
                await stub.StoresSet(
                    pb.StoresSetOptions(Keys=keys, Values=values), metadata=meta, timeout=timeout
                )
            )
        if args.rpc == "stores-delete":
            return _result(
                await stub.StoresDelete(pb.StoresDeleteOptions(Keys=keys), metadata=meta, timeout=timeout)
            )
        if args.rpc == "stores-get":
            got = await stub.StoresGet(pb.StoresGetOptions(Keys=keys), metadata=meta, timeout=timeout)
            for got_key, got_value in zip(got.Keys, got.Values, strict=True):
                print(f"{_show_key(got_key.Floats)}  {_show(got_value.Bytes)}")
            return 0
        if len(keys) != 1:
            raise ValueError("stores-find needs exactly one --key")
        found = await stub.StoresFind(
            pb.StoresFindOptions(Key=keys[0], TopK=args.top_k), metadata=meta, timeout=timeout
        )
        for found_key, found_value, sim in zip(found.Keys, found.Values, found.Similarities, strict=True):
            print(f"{sim:+.4f}  {_show_key(found_key.Floats)}  {_show(found_value.Bytes)}")
        return 0


def _result(result: Any) -> int:
    print(("ok: " if result.success else "failed: ") + result.message)
    return 0 if result.success else 1


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
