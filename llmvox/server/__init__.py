"""The HTTP/WebSocket server: `llmvox.server.app.create_app(settings, tts=...)`."""
