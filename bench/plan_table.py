"""The README's large-model tables, computed from the memory plan (never written by hand).

For the shapes of ``bench/model_shapes.py`` (SmolLM2-135M to Llama-3.1-70B), each method, in
bfloat16 and float32: the plan's peak, and for GPUs of 24, 48 and 80 GB whether the edit fits
wholly on the GPU ("yes"), fits with the weights that do not fit offloaded to CPU/disk
(``--max-memory 0=... --offload-folder DIR``: "offload"), or not at all ("no": even the working
memory and one block exceed the GPU).

    python bench/plan_table.py > /tmp/tables.md
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from model_shapes import SHAPES, llama_config  # noqa: E402

from auditor.model.memory_plan import human, plan_config  # noqa: E402

GPUS_GB = (24, 48, 80)
METHODS = ("rome", "memit", "alphaedit")


def fits(plan, gb: int) -> str:
    room = gb * 10**9  # GPU memory is sold in decimal gigabytes
    if plan.peak <= room:  # the GPU's peak (a batch's held-out keys are in host memory)
        return "yes"
    if plan.working + plan.largest_block <= room:
        return "offload"
    return "no"


def main() -> None:
    print("| model | dtype | method | weights | working memory | peak | host: held-out keys | "
          + " | ".join(f"{g} GB" for g in GPUS_GB) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(GPUS_GB))
    for shape in SHAPES:
        config = llama_config(shape)
        for dtype in ("bfloat16", "float32"):
            for method in METHODS:
                plan = plan_config(config, dtype=dtype, method=method, name=shape)
                print(f"| {shape} | {dtype} | {method} | {human(plan.weights)} | {human(plan.working)} | "
                      f"{human(plan.peak)} | {human(plan.held_out) if plan.held_out else '-'} | "
                      + " | ".join(fits(plan, g) for g in GPUS_GB) + " |")


if __name__ == "__main__":
    main()
