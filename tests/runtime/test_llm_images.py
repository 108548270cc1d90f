"""localfleet.llm.images: a request's Images as base64, a data URI or a checked path."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from localfleet.errors import BadInput, NotFound
from localfleet.llm.images import MAX_IMAGES, read_images
from localfleet.paths import PathPolicy

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def test_base64_a_data_uri_and_a_path_read_the_same_bytes(tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(PNG)
    encoded = base64.b64encode(PNG).decode()
    entries = [encoded, f"data:image/png;base64,{encoded}", str(picture)]
    assert read_images(entries, PathPolicy([str(tmp_path)])) == [PNG, PNG, PNG]


def test_url_safe_base64_without_padding_is_read(tmp_path: Path) -> None:
    encoded = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert read_images([encoded], PathPolicy([])) == [PNG]


def test_a_path_outside_the_roots_is_refused_naming_the_entry(tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(PNG)
    with pytest.raises(BadInput, match=r"Images\[0\]"):
        read_images([str(picture)], PathPolicy([str(tmp_path / "elsewhere")]))


@pytest.mark.parametrize(
    ("entry", "says"),
    [("", "empty"), ("not base64 !!", "neither base64 nor"), ("data:image/png;base64,", "no bytes")],
)
def test_bad_entries_name_the_problem(entry: str, says: str) -> None:
    with pytest.raises((BadInput, NotFound), match=says):
        read_images(["aGk=", entry], PathPolicy([]))


def test_too_many_images_are_refused_before_any_is_decoded() -> None:
    with pytest.raises(BadInput, match=f"at most {MAX_IMAGES}"):
        read_images(["!"] * (MAX_IMAGES + 1), PathPolicy([]))
