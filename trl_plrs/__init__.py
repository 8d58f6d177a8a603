# Copyright 2026 The trl_plrs Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Curriculum sequential fine-tuning with Progressive LoRA Rank Shrinking (PLRS) for TRL's `SFTTrainer`."""

__version__ = "0.1.0.dev0"

import importlib
import logging


def _quiet_cpu_only_notices() -> None:
    """
    Two notices of optional dependencies that a curriculum on a machine without an accelerator triggers on import,
    about nothing it does, filtered by message on their own loggers (nothing else of theirs is hidden):
    bitsandbytes (which PEFT imports) on CPUs with AVX512-BF16 without the `kernels` package, that a faster CPU kernel
    for 4-bit *inference* could not be loaded (training turns that path off, `trl_plrs.quantization`); DeepSpeed (which
    TRL imports to check whether a model is wrapped), that it found no accelerator (on a machine that has none).
    """
    import torch

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "gemm_4bit_forward" not in record.getMessage()
    )
    if not torch.accelerator.is_available():
        logging.getLogger("DeepSpeed").addFilter(
            lambda record: not record.getMessage().startswith("Setting accelerator to CPU")
        )


_quiet_cpu_only_notices()

from .callbacks import CurriculumCallback, PLRSCallback  # noqa: E402
from .curriculum import PRESETS, Stage, build_stages, parse_level  # noqa: E402
from .data import split_train_validation  # noqa: E402
from .plrs_config import PLRSConfig  # noqa: E402
from .plrs_trainer import CurriculumSFTTrainer  # noqa: E402
from .replay import stage_row_indices  # noqa: E402
from .resume import CurriculumState, StageSummary  # noqa: E402


# MATH helpers, from `trl_plrs.math`, imported on first use so that `import trl_plrs` needs neither math-verify nor the
# MATH code (`from trl_plrs import load_math` keeps working).
_MATH_EXPORTS = (
    "SYSTEM_PROMPT",
    "accuracy_report",
    "evaluate_math",
    "extract_boxed_answer",
    "is_equiv",
    "load_math",
    "make_synthetic_math",
    "math_corpus",
    "normalize_answer",
    "rescore_predictions",
    "to_prompt_completion",
)


def __getattr__(name: str):
    if name in _MATH_EXPORTS:
        return getattr(importlib.import_module(".math", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "CurriculumCallback",
    "CurriculumSFTTrainer",
    "CurriculumState",
    "PLRSCallback",
    "PLRSConfig",
    "Stage",
    "StageSummary",
    "build_stages",
    "parse_level",
    "split_train_validation",
    "stage_row_indices",
    *_MATH_EXPORTS,
]
