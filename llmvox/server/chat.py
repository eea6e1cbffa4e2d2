"""The app's chat hook (`create_app` calls `mount(app, state)` for every chat type but tts).

The routes themselves live in `llmvox.server.chat_routes`; the chat logic in `llmvox.chat`.
"""

from llmvox.server.chat_routes import mount

__all__ = ["mount"]
