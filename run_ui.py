"""The original entry point, kept: `python run_ui.py --ip SERVER_IP --port PORT [--ui_port P]`.

The original opened a PyQt5 desktop app; this serves the llmvox web UI on http://127.0.0.1:P/ and
forwards its API calls to the server at SERVER_IP:PORT. It runs `llmvox ui`.
"""

import sys

from llmvox.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
