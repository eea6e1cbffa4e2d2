import sys

from llmvox.cli import main

sys.exit(main())
