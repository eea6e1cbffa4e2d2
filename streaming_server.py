"""The original entry point, kept: `python streaming_server.py --chat_type tts --api_port 5003 ...`.

Same flags as the original LLMVoX server (plus llmvox's own); it runs `llmvox serve`.
"""

import sys

from llmvox.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
