"""`jobs.train.train` with LoRA under ZeRO-3, run by torchrun from test_multiproc.

sftcore.recipe refuses lora + zero3 (the recipe contract: DeepSpeed is for full fine-tunes, zero2
also with lora), so no recipe reaches this path today. The reference workflow's trap, adapters
saved under ZeRO-3 coming out empty because each rank holds only a shard, is still worth pinning
on the job's own save path: this swaps the validated recipe's `train.deepspeed` to zero3 after
validation, and the test checks what the job saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.train import train
from sftcore.recipe import load_recipe
from tests.jobs.test_train_support import left_up

if __name__ == "__main__":
    recipe = load_recipe(sys.argv[1])
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"deepspeed": "zero3"})})
    sys.exit(train(recipe, Path(sys.argv[2])) or left_up())
