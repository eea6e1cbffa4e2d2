"""`llmvox ui --ip SERVER_IP --port PORT`: the web UI on this machine, talking to a remote server.

The original's `run_ui.py --ip --port` opened a desktop app; ours serves the same page as the server's
own `/` and forwards the API calls (see `llmvox.server.ui_proxy`), so a laptop's browser can use a GPU
server. Open the printed localhost address: browsers allow the microphone on localhost.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from llmvox.cli.common import add_flag


def add_ui_args(p: argparse.ArgumentParser) -> None:
    add_flag(p, "ip", default="127.0.0.1", help="address of the llmvox server (or a full http(s):// URL)")
    add_flag(p, "port", type=int, default=5003, help="port of the llmvox server (default 5003)")
    add_flag(p, "ui_port", type=int, default=5004, help="port for this UI (default 5004)")
    add_flag(p, "ui_host", default="127.0.0.1",
             help="address this UI listens on (default 127.0.0.1; the microphone needs localhost or https)")
    add_flag(p, "api_key", default=None,
             help="key sent to the server for requests that carry none (default: $LLMVOX_API_KEY)")
    add_flag(p, "open", action="store_true", help="open the page in the default browser")
    p.add_argument("-v", "--verbose", dest="ui_verbose", action="store_true", help="log every request")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="serve the web UI and forward it to an llmvox server",
                              description="Serve the browser UI on this machine and proxy every API call "
                                          "(streamed) to the llmvox server at --ip:--port.")
    add_ui_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from llmvox.errors import LLMVoXError
    from llmvox.server.ui_proxy import create_proxy_app, upstream_url

    if not 0 < args.ui_port < 65536 or not 0 < args.port < 65536:
        raise LLMVoXError("--port and --ui_port must be 1-65535")
    upstream = upstream_url(args.ip, args.port)
    app = create_proxy_app(upstream, api_key=args.api_key or os.environ.get("LLMVOX_API_KEY") or None)
    host = args.ui_host
    shown = f"[{host}]" if ":" in host else host
    page = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{args.ui_port}/"
    print(f"llmvox UI: open {page}  (API calls go to {upstream})", flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(page,)).start()
    level = "debug" if args.ui_verbose else "info"
    logging.getLogger("llmvox").setLevel(getattr(logging, level.upper()))
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=host, port=args.ui_port, log_level=level, access_log=args.ui_verbose)
    return 0
