"""Server settings: one dataclass that the CLI fills and the app factory reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmvox.engine.config import StreamConfig
from llmvox.errors import LLMVoXError
from llmvox.llm.select import CHAT_TYPES as LLM_CHAT_TYPES
from llmvox.text.tokenizer import PAD_ID

CHAT_TYPES = ("tts", *LLM_CHAT_TYPES)  # tts: the speech endpoints alone


@dataclass
class ServerSettings:
    """Everything the server needs besides the voice itself."""

    host: str = "127.0.0.1"  # loopback unless --api_host says otherwise (the original bound 0.0.0.0)
    port: int = 5003
    chat_type: str = "tts"
    api_key: str | None = None  # when set, every route but /health and / needs `Authorization: Bearer KEY`
    cors_origins: list[str] = field(default_factory=list)  # browser origins besides the server's own
    max_text_chars: int = 4096  # per request (and per WebSocket text message), before and after normalising
    max_body_bytes: int = 32 * 1024 * 1024  # request bodies, counted as they arrive
    read_timeout: float = 30.0  # seconds a client may take to send a request body
    send_timeout: float = 30.0  # seconds a client may leave the server's writes unread
    idle_timeout: float = 120.0  # seconds a WebSocket may stay silent with nothing being spoken
    max_streams: int = 16  # streams served at once
    max_queue: int = 32  # requests allowed to wait for a free stream
    queue_timeout: float = 10.0  # seconds a request may wait before a 503
    num_workers: int = 2
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    max_batch: int = 32  # decoder rows per worker
    threads: int | None = None  # torch threads per worker thread (None: cores / (2 * workers))
    stream: StreamConfig = field(default_factory=StreamConfig)
    shutdown_timeout: float = 10.0  # graceful shutdown: seconds streams get to finish
    pad_id: int = PAD_ID
    chat_options: dict[str, Any] = field(default_factory=dict)  # chat flags by name (llmvox.chat_flags)

    def validate(self) -> ServerSettings:
        if self.chat_type not in CHAT_TYPES:
            raise LLMVoXError(f"--chat_type must be one of {', '.join(CHAT_TYPES)} (got {self.chat_type!r})")
        if not 0 < self.port < 65536:
            raise LLMVoXError(f"--api_port must be 1-65535 (got {self.port})")
        if self.max_text_chars < 1:
            raise LLMVoXError("--max_text_chars must be at least 1")
        if self.max_body_bytes < 1024:
            raise LLMVoXError("--max_body_mb must be at least 0.001 (1 KB)")
        for name in ("read_timeout", "send_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise LLMVoXError(f"--{name} must be a positive number of seconds")
        if self.max_streams < 1:
            raise LLMVoXError("--max_streams must be at least 1")
        if self.max_queue < 0 or self.queue_timeout < 0:
            raise LLMVoXError("--max_queue and --queue_timeout must not be negative")
        if self.num_workers < 1:
            raise LLMVoXError("--num_workers must be at least 1")
        if self.max_batch < 1:
            raise LLMVoXError("--max_batch must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise LLMVoXError("--threads must be at least 1")
        if not self.devices:
            self.devices = ["cpu"]
        self.stream.validate()
        return self
