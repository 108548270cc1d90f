"""What receiving a large request costs the event loop: the shortcuts the runtime takes must not change
what they stand in for (hyperframe's repr of a DATA frame, a request's size, base64 with line breaks)."""

from __future__ import annotations

import base64
import io

import pytest
from hyperframe.frame import DataFrame, Frame

from localfleet import drain  # noqa: F401  (imported for its DATA frame repr)
from localfleet.codec import CappedProtoCodec, decoded_bytes
from localfleet.errors import BadInput
from localfleet.proto import backend_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, 10, 11, 12, 16384])
def test_data_frame_repr_is_hyperframes_own(size: int) -> None:
    frame = DataFrame(1, data=bytes(i % 256 for i in range(size)))
    assert DataFrame._body_repr is not Frame._body_repr  # the shortcut is in place
    assert frame._body_repr() == Frame._body_repr(frame)
    assert repr(frame).startswith("DataFrame(stream_id=1")


def test_padded_data_frame_repr_is_hyperframes_own() -> None:
    frame = DataFrame(1, data=b"abc" * 10, pad_length=4)
    frame.flags.add("PADDED")
    assert frame._body_repr() == Frame._body_repr(frame)


def test_codec_records_the_size_it_decoded() -> None:
    data = pb.DetectOptions(src="x" * 100_000).SerializeToString()
    message = CappedProtoCodec(1 << 20).decode(data, pb.DetectOptions)
    assert len(message.src) == 100_000
    assert decoded_bytes.get() == len(data)


def test_base64_with_line_breaks_still_decodes() -> None:
    image = pytest.importorskip("PIL.Image")
    from localfleet import pictures

    out = io.BytesIO()
    image.new("RGB", (64, 48), (10, 20, 30)).save(out, format="PNG")
    wrapped = base64.encodebytes(out.getvalue()).decode()  # MIME style: a line break every 76 characters
    assert "\n" in wrapped
    for text in (wrapped, base64.b64encode(out.getvalue()).decode(), "data:image/png;base64," + wrapped):
        assert pictures.from_base64(text, "src").size == (64, 48)
    for bad in ("not base64!", "ÿÿÿÿ", wrapped + "!"):
        with pytest.raises(BadInput, match="src is not base64"):
            pictures.from_base64(bad, "src")
