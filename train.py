"""The original entry point, kept: `python train.py --batch_size=8 ...` is `llmvox train ...`.

Works under `torchrun --standalone --nproc_per_node=N train.py ...` (DDP).
"""

import sys

from llmvox.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
