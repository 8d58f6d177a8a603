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
"""
Everything specific to MATH (Hendrycks et al., 2021): loading and formatting the data, answer extraction and grading,
exact-match evaluation and answer transitions. The curriculum itself (`trl_plrs`) does not need it; symbolic grading
needs math-verify (`pip install trl_plrs[math]`), imported when first used.
"""

from .data import (
    SYSTEM_PROMPT,
    build_prompt_messages,
    load_math,
    make_synthetic_math,
    math_corpus,
    to_prompt_completion,
)
from .evaluation import evaluate_math, generate_completions, rescore_predictions
from .grading import accuracy_report, extract_boxed_answer, grade_completion, is_equiv, normalize_answer
from .transitions import answer_transitions


__all__ = [
    "SYSTEM_PROMPT",
    "accuracy_report",
    "answer_transitions",
    "build_prompt_messages",
    "evaluate_math",
    "extract_boxed_answer",
    "generate_completions",
    "grade_completion",
    "is_equiv",
    "load_math",
    "make_synthetic_math",
    "math_corpus",
    "normalize_answer",
    "rescore_predictions",
    "to_prompt_completion",
]
