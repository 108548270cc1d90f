"""Images in a prompt: their base64, and the multimodal projector (MMProj) that evaluates them with the
prompt's text through libmtmd, as llama-cpp-python's MTMD chat handler does."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from localfleet.errors import BadInput, EngineFailure
from localfleet_llama_cpp.native import Native
from localfleet_llama_cpp.spec import Prompt


class Projector:
    """A libmtmd context beside the model (mtmd_cpp loads libmtmd: imported only for a projector)."""

    def __init__(self, path: str, model: Any, *, gpu: bool, threads: int) -> None:
        from llama_cpp import mtmd_cpp

        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = gpu
        params.print_timings = False
        params.n_threads = threads
        ctx = mtmd_cpp.mtmd_init_from_file(path.encode(), model, params)
        if not ctx:
            raise BadInput(f"MMProj {path!r} could not be loaded as a multimodal projector for this model")
        self._mtmd: Any = ctx

    def close(self) -> None:
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_free(self._mtmd)

    def evaluate(self, prompt: Prompt, native: Native, n_ctx: int) -> int:
        """Text with media markers plus images, evaluated into the context; the prompt's token count."""
        from llama_cpp import mtmd_cpp

        llm = native.llm
        marker = mtmd_cpp.mtmd_default_marker().decode()
        text = prompt.text
        missing = len(prompt.images) - text.count(marker)
        if missing > 0:  # LocalAI puts markers in the prompt; a bare prompt gets them in front
            text = marker * missing + text
        bitmaps = []
        chunks = None
        try:
            for data in prompt.images:
                buf = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
                bitmap = mtmd_cpp.mtmd_helper_bitmap_init_from_buf(self._mtmd, buf, len(data), False)
                if not bitmap:
                    raise BadInput("an image in Images could not be decoded (send PNG, JPEG or BMP, base64)")
                bitmaps.append(bitmap)
            encoded = text.encode()
            input_text = mtmd_cpp.mtmd_input_text()
            input_text.text = encoded
            input_text.text_len = len(encoded)
            input_text.add_special = True
            input_text.parse_special = True
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if mtmd_cpp.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(input_text), array, len(bitmaps)):
                raise BadInput("the prompt's media markers do not match its images")
            total = sum(
                mtmd_cpp.mtmd_input_chunk_get_n_tokens(mtmd_cpp.mtmd_input_chunks_get(chunks, i))
                for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))
            )
            if total >= n_ctx:
                raise BadInput(
                    f"the prompt is {total} tokens with its images but the context holds {n_ctx} "
                    "(ContextSize): shorten it or load the model with a larger ContextSize"
                )
            native.clear()
            new_past = llama_cpp.llama_pos(0)
            if mtmd_cpp.mtmd_helper_eval_chunks(
                self._mtmd, llm.ctx, chunks, 0, 0, llm.n_batch, True, ctypes.byref(new_past)
            ):
                raise EngineFailure("llama.cpp could not evaluate the prompt with its images")
            native.media_evaluated(new_past.value)
            return int(total)
        finally:
            if chunks is not None:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)
