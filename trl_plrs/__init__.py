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

from .callbacks import CurriculumCallback, PLRSCallback
from .curriculum import PRESETS, Stage, build_stages, parse_level
from .data import split_train_validation
from .plrs_config import PLRSConfig
from .plrs_trainer import CurriculumSFTTrainer
from .replay import stage_row_indices
from .resume import CurriculumState, StageSummary


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
