"""The transformers and rerankers processes listen before torch is imported: it comes with LoadModel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("backend", ["transformers", "rerankers"])
def test_serving_imports_no_torch_before_load(backend: str) -> None:
    probe = textwrap.dedent(
        f"""
        import asyncio, sys
        from localfleet import catalog
        from localfleet.server import BackendServer
        from localfleet.settings import Settings

        async def main():
            app = BackendServer(catalog.find("{backend}").load()(), Settings(addr="127.0.0.1:0"))
            await app.start()
            heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "numpy")
                           if m in sys.modules)
            app.stop(0)
            await app.wait_stopped()
            print(",".join(heavy) or "none")

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "none", out.stderr
