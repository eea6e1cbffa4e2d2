"""The browser UI: the page at `GET /`, its files under `/ui/`, and `GET /v1/info` that the page reads.

`GET /` answers browsers (an `Accept` header that asks for text/html) with the page and everyone else
with the JSON usage the server always gave, so curl and scripts see no change. The page only talks to
the server it was loaded from (relative URLs), which is what lets `run_ui.py` serve the same files and
proxy the API calls to a remote server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from llmvox.codec.config import SAMPLE_RATE

STATIC_DIR = Path(__file__).with_name("static")
INDEX = STATIC_DIR / "index.html"
UI_PREFIX = "/ui"
CHAT_MODES = ("text", "voice", "visual_speech", "multimodal")
MODE_PATHS = {"text": "/textchat", "voice": "/voicechat", "visual_speech": "/vlmschat",
              "multimodal": "/multimodalchat", "tts": "/tts"}


def wants_html(request: Request) -> bool:
    """True for browsers navigating to the page (they list text/html in Accept; curl sends */*)."""
    return "text/html" in request.headers.get("accept", "").lower()


def page_response() -> Response:
    # no-cache: a new build's page is picked up at once (the files are small)
    return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def server_info(request: Request) -> dict[str, Any]:
    """What the page needs to set itself up: chat modes, voice, models, limits, chunk schedule."""
    from llmvox.errors import LLMVoXError
    from llmvox.server.guard import check_api_key

    state = request.app.state.llmvox
    settings = state.settings
    chat = state.extras.get("chat")
    try:
        check_api_key(request.headers, settings)
        authorized = True
    except LLMVoXError:
        authorized = False
    modes: dict[str, dict[str, Any]] = {}
    for mode in CHAT_MODES:
        if chat is None:
            reason = (f"this server runs --chat_type {settings.chat_type}, which serves speech endpoints only"
                      if settings.chat_type == "tts" else "the chat routes are not available in this build")
        else:
            reason = chat.unavailable(mode)
        modes[mode] = {"available": reason is None, "reason": reason, "path": MODE_PATHS[mode]}
    modes["tts"] = {"available": True, "reason": None, "path": MODE_PATHS["tts"]}  # every server reads aloud
    stream = settings.stream
    info: dict[str, Any] = {
        "name": "llmvox",
        "version": request.app.version,
        "chat_type": settings.chat_type,
        "modes": modes,
        "api_key_required": bool(settings.api_key),
        "authorized": authorized,
        "voice": {
            "name": state.voices.default,  # the default voice; requests may pick another of `voices`
            "sample_rate": state.sample_rate if state.tts is not None else SAMPLE_RATE,
            "audio_format": "f32le",
        },
        "voices": [{"name": v["name"], "default": v["default"], "language": v["language"],
                    "text_frontend": v["text_frontend"]} for v in state.voices.listing()],
        "stream": {
            "initial_dump_size_1": stream.initial_dump_size_1,
            "initial_dump_size_2": stream.initial_dump_size_2,
            "max_dump_size": stream.max_dump_size,
            "chunk_policy": stream.chunk_policy,
            "max_audio_length": stream.max_audio_length,
            "chunk_join": stream.chunk_join,
            "workers": settings.num_workers,
            "per_request": False,  # the schedule is a server setting (llmvox serve --initial_dump_size_1 ...)
        },
        "limits": {
            "max_text_chars": settings.max_text_chars,
            "max_streams": settings.max_streams,
        },
        "llm": None,
        "asr": None,
        "system_prompt": None,
        "per_request_system_prompt": chat is not None,
    }
    if chat is not None:
        info["llm"] = {"name": getattr(chat.llm, "name", None), "max_tokens": chat.settings.max_tokens,
                       "temperature": chat.settings.temperature}
        if chat.asr is not None:
            model_dir = getattr(chat.asr, "model_dir", None)
            info["asr"] = {"name": Path(str(model_dir)).name if model_dir else "whisper",
                           "language": chat.settings.asr_language}
        info["limits"].update(max_images=chat.settings.images.max_images,
                              max_image_bytes=chat.settings.images.max_bytes,
                              max_audio_seconds=chat.settings.audio.max_seconds)
        if authorized:  # the server's prompt is its configuration: only for clients holding the key
            info["system_prompt"] = chat.settings.system_prompt
    return info


def ui_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def root(request: Request):
        if wants_html(request):
            return page_response()
        from llmvox.server.routes import root as usage

        return await usage(request)

    return router


def info_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/info", summary="Chat modes, voice, models, limits and chunk schedule (for the web UI)")
    async def info(request: Request) -> dict[str, Any]:
        return server_info(request)

    return router


def mount_ui(app: FastAPI) -> None:
    """Add the page, its files and `/v1/info`; call before the API router so `/` reaches the page first."""
    app.include_router(ui_router())
    app.include_router(info_router())
    app.mount(UI_PREFIX, static_files(), name="ui")
