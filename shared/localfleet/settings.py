"""Process settings: flags over `LOCALFLEET_*` env over defaults, read once at start-up, never at import."""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Go duration ("2s", "500ms", "1m30s"), as LocalAI's env vars carry them."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration: use seconds (2.5) or a Go duration (2s, 500ms)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


class Settings(BaseSettings):
    """Everything the runtime reads from its environment, in one place (the README's settings table)."""

    model_config = SettingsConfigDict(env_prefix="LOCALFLEET_", extra="ignore", populate_by_name=True)

    addr: str = Field("127.0.0.1:50051", description="HOST:PORT to listen on (LocalAI passes --addr)")
    model: str | None = Field(None, description="model to load at start-up, as LoadModel's Model")
    model_path: str = Field("", description="models directory for the start-up model (ModelPath)")
    model_options: list[str] = Field(
        default_factory=list, description="start-up model Options, key:value (JSON list in env)"
    )
    concurrency: int | None = Field(None, ge=1, description="requests run at once; default: the backend's")
    queue_size: int = Field(
        64, ge=0, description="requests that may wait for a slot before RESOURCE_EXHAUSTED"
    )
    grace_period: float = Field(30.0, ge=0, description="seconds calls in flight get to finish on SIGTERM")
    max_message_bytes: int = Field(50 * MiB, ge=1024, description="request and reply size cap")
    metrics_addr: str | None = Field(None, description="HOST:PORT for Prometheus metrics; off when unset")
    path_roots: list[str] = Field(
        default_factory=list,
        description="folders request paths (dst, src, audio) must lie in; any when empty (JSON list in env)",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json lines")
    auth_token: str | None = Field(
        None,
        validation_alias=AliasChoices("LOCALAI_GRPC_AUTH_TOKEN", "LOCALFLEET_AUTH_TOKEN", "auth_token"),
        description="bearer token required on every Backend call when set",
    )
    # Off for a backend a person starts (`nohup localfleet serve ... &` outlives its shell); run.sh, which
    # LocalAI core launches, turns it on unless the variable is set.
    parent_watch: bool = Field(
        False,
        validation_alias=AliasChoices("LOCALAI_BACKEND_PARENT_WATCH", "parent_watch"),
        description="exit when the launching process (LocalAI core) dies; run.sh turns it on",
    )
    parent_watch_interval: float = Field(
        2.0,
        gt=0,
        validation_alias=AliasChoices("LOCALAI_BACKEND_PARENT_WATCH_INTERVAL", "parent_watch_interval"),
        description="how often to look for the parent, seconds or a Go duration",
    )
    batch_window_ms: float = Field(
        2.0, ge=0, description="dynamic batching: ms the first call of a batch waits for others to join"
    )
    batch_max_size: int = Field(32, ge=1, description="dynamic batching: most calls in one engine batch")

    @field_validator("parent_watch_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("addr", "metrics_addr", mode="after")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_addr(value)
        return value

    @field_validator("auth_token", mode="after")
    @classmethod
    def _empty_token_is_off(cls, value: str | None) -> str | None:
        return value or None

    def host_port(self) -> tuple[str, int]:
        return split_addr(self.addr)


def split_addr(addr: str) -> tuple[str, int]:
    """("host", port) from HOST:PORT, [v6]:PORT or :PORT."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} must be HOST:PORT, e.g. 127.0.0.1:50051")
    return host.strip("[]") or "0.0.0.0", int(port)
