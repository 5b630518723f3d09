"""Settings of the ``provider-proxy`` plugin: the providers and the models each serves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from aigw.config import Settings
from aigw.headers import UpstreamHeaders
from aigw.http_client import DEFAULT_MAX_BODY_BYTES
from aigw.sse import MAX_EVENT_SIZE

ProviderType = Literal["openai", "azure", "dashscope", "mock"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "dashscope": "https://dashscope.aliyuncs.com/compatible-mode/v1",
}


def _serve_everything() -> dict[str, str | None]:
    return {"*": None}


class MockSettings(Settings):
    """Shape of the ``mock`` provider's answers: delays in milliseconds and chunk count."""

    latency_ms: float = Field(0.0, ge=0)
    ttft_ms: float = Field(0.0, ge=0)
    chunk_delay_ms: float = Field(0.0, ge=0)
    chunks: int = Field(4, ge=1, le=1000)


class ProviderConfig(Settings):
    """One upstream.

    ``name``: label used in logs, metrics and ``fallbacks``. ``type``: ``openai`` (any
    OpenAI-compatible ``base_url``: OpenAI, DeepSeek, Moonshot, vLLM, Ollama's ``/v1``),
    ``azure`` (``base_url`` is the resource endpoint, the upstream model is the deployment,
    ``api_version`` is sent), ``dashscope`` (Qwen's OpenAI-compatible mode) or ``mock``.
    ``api_keys``: tried in turn on retries (``api_key`` is a one-key shorthand). ``models``:
    the model names served: a list of patterns (``gpt-4o``, ``gpt-4*``, ``*``) or a mapping
    pattern → upstream model name (``null`` keeps the requested name). ``enabled``: false (or
    empty, as from ``${KEY:+true}``) leaves the provider out. ``fallbacks``: providers to try,
    in order, when this one keeps failing before the first byte. ``max_retries`` on connect
    errors, 429 and 5xx, with exponential backoff from ``retry_backoff_s``. ``proxy``: the
    ``http://[user:password@]host:port`` proxy its requests go through; unset, the environment's
    ``HTTPS_PROXY``/``HTTP_PROXY`` (and ``NO_PROXY``) decide; empty, none (see ``egress.py``).
    ``max_response_bytes``: the largest answer body (as decoded from gzip/deflate) read whole
    or waiting unread, 64 MiB by default; ``max_event_bytes``: the largest SSE event of a
    stream, 8 MiB by default. An answer past either is a 502 (mid-stream: an error event).
    """

    name: str = Field(min_length=1)
    type: ProviderType = "openai"
    base_url: str | None = None
    api_key: str | None = None
    api_keys: list[str] = Field(default_factory=list)
    api_version: str = "2024-10-21"
    models: dict[str, str | None] = Field(default_factory=_serve_everything)
    enabled: bool = True
    fallbacks: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    max_response_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_event_bytes: int = Field(MAX_EVENT_SIZE, ge=1024)
    max_retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.2, ge=0)
    proxy: str | None = None
    mock: MockSettings = Field(default_factory=MockSettings)

    @field_validator("enabled", mode="before")
    @classmethod
    def _empty_is_false(cls, value: Any) -> Any:
        return False if value is None or value == "" else value

    @field_validator("models", mode="before")
    @classmethod
    def _list_to_mapping(cls, value: Any) -> Any:
        if isinstance(value, list):
            return dict.fromkeys(value)
        return value

    @field_validator("models")
    @classmethod
    def _patterns(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for pattern in value:
            if "*" in pattern[:-1]:
                raise ValueError(f"{pattern!r}: '*' may only end a pattern")
        return value

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.type == "azure" and not self.base_url:
            raise ValueError("azure needs base_url (https://<resource>.openai.azure.com)")
        return self

    @property
    def keys(self) -> list[str]:
        """Every configured API key, empty ones dropped."""
        return [k for k in ([self.api_key] if self.api_key else []) + self.api_keys if k]

    @property
    def url(self) -> str:
        """The base URL without a trailing slash."""
        return (self.base_url or DEFAULT_BASE_URLS.get(self.type, "")).rstrip("/")


class ProviderProxyConfig(Settings):
    """``providers``: the upstreams, in priority order (earlier wins a tie between patterns).

    ``drop_headers``: more client headers never forwarded upstream (besides the hop-by-hop ones,
    the cache controls and any that carries credentials: :mod:`aigw.headers`).
    ``forward_headers``: if set, the only client headers forwarded (the gateway's own, such as
    the API key, are sent anyway); naming one that is never forwarded is an error.
    """

    providers: list[ProviderConfig] = Field(min_length=1)
    drop_headers: list[str] = Field(default_factory=list)
    forward_headers: list[str] | None = None

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, value: list[str] | None) -> list[str] | None:
        UpstreamHeaders(forward=value)  # raises for a header that is never forwarded
        return value

    @model_validator(mode="after")
    def _check(self) -> ProviderProxyConfig:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        enabled = {p.name for p in self.providers if p.enabled}
        for p in self.providers:
            for fb in p.fallbacks:
                if fb not in names:
                    raise ValueError(f"provider {p.name!r}: unknown fallback {fb!r}")
        if not enabled:
            raise ValueError("no provider is enabled")
        return self
