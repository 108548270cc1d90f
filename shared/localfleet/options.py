"""LoadModel `Options`: "key:value" strings, split at the first ":", coerced into a backend's typed model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from localfleet.errors import BadInput
from localfleet.inputs import excerpt

M = TypeVar("M", bound=BaseModel)


class NoOptions(BaseModel):
    """For a backend that takes no options: any key is reported as unknown."""

    model_config = ConfigDict(extra="forbid")


class BackendOptions(BaseModel):
    """Base for a backend's options: unknown keys fail LoadModel instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_options(raw: Iterable[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition(":")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"option {excerpt(item)} is not key:value (e.g. 'threads:4')")
        pairs[key] = value.strip()
    return pairs


def parse_options(model: type[M], raw: Iterable[str]) -> M:
    """Typed options; a wrong value raises BadInput naming the key and the expected type."""
    pairs = split_options(raw)
    try:
        return model.model_validate(pairs)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "options"
            if err["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                problems.append(f"unknown option {excerpt(key)} (known: {known})")
            else:
                field = model.model_fields.get(key)
                expected = _type_name(field.annotation) if field else "a valid value"
                value = excerpt(str(err.get("input")))
                problems.append(f"option {excerpt(key)}={value}: expected {expected} ({err['msg']})")
        raise BadInput("; ".join(problems)) from None


def _type_name(annotation: object) -> str:
    name = getattr(annotation, "__name__", None)
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        str(name), str(annotation)
    )
