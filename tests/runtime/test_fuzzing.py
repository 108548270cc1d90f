"""The fuzzer itself (tests/fuzzing.py): the same seed makes the same requests, and each kind of failure
it exists to catch is caught, on a backend that fails on purpose."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from pydantic import BaseModel

from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from tests import fuzzing

FAULTY = "tests.runtime.test_fuzzing:Faulty"
SEEDS = {"Predict": pb.PredictOptions(Prompt="hello", Tokens=4)}


class Faulty(Backend):
    """Predict answers, except for four prompts: each fails one way a backend can."""

    name = "faulty"

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        return "ready"

    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        if request.Prompt == "exit":
            os._exit(3)
        if request.Prompt == "hang":
            await asyncio.sleep(3600)
        if request.Prompt == "unknown":
            raise GRPCError(Status.UNKNOWN, "a status no handler should end with")
        if request.Prompt == "fat":
            held = b"x" * (300 * MiB)  # touched, so resident
            await asyncio.sleep(0.3)  # long enough for the sampler to see it
            del held
        return pb.Reply(message=b"ok")


def target(folder: Path, **fields: Any) -> fuzzing.Target:
    stage = fuzzing.Stage(pb.ModelOptions(Model="faulty"), SEEDS)
    base = fuzzing.Target(FAULTY, fuzzing.served(Faulty), [stage], folder, rss_bound=200 * MiB, per_rpc=40)
    return dataclasses.replace(base, **fields)


def test_the_same_seed_makes_the_same_requests(tmp_path: Path) -> None:
    first, again = (fuzzing.Cases(target(tmp_path), "Predict", SEEDS["Predict"]) for _ in range(2))
    made = [first.next() for _ in range(60)]
    assert made == [again.next() for _ in range(60)]
    assert {case.origin.split()[0] for case in made} == {"random", "mutated", "raw"}
    assert fuzzing.replay(target(tmp_path), "Predict", 37) == made[36]
    other = fuzzing.Cases(target(tmp_path, seed=2), "Predict", SEEDS["Predict"])
    assert [other.next().body for _ in range(60)] != [case.body for case in made]


def test_a_backend_that_fails_nowhere_passes_every_check_but_the_shared_bugs(tmp_path: Path) -> None:
    report = fuzzing.run(target(tmp_path))
    assert report.messages > 40
    assert report.statuses["OK"] > 0
    failed = {check for check in fuzzing.CHECKS if report.failed(check)}
    assert failed <= set(fuzzing.SHARED_BUGS), report.summary()


def test_hangs_unknown_runaway_memory_and_a_crash_are_caught(tmp_path: Path) -> None:
    known = [("Predict", pb.PredictOptions(Prompt=prompt)) for prompt in ("hang", "unknown", "fat", "exit")]
    report = fuzzing.run(target(tmp_path, known=known, deadline=1.0))
    assert [f.case.origin for f in report.hangs] == ["known #1"]
    assert [f.case.origin for f in report.unknown] == ["known #2"]
    assert report.peak_rss > 300 * MiB
    assert "known #3" in report.peak_during
    assert report.crash is not None
    assert report.crash.case.origin == "known #4"
    assert report.exit_code == 3
    for check in ("no_hang", "no_unknown", "rss_within_bound", "no_crash"):
        assert report.failed(check), check
    assert report.messages == 3  # the run ends with the server
