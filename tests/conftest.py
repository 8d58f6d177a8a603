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

import os


# Tiny models are dominated by per-op overhead; several threads per process only contend for the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_plrs.testing import build_tiny_model, build_tokenizer  # noqa: E402


torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, architecture="llama")


def make_leveled_dataset(levels=(1, 2, 3), rows_per_level=8, level_format="Level {}") -> Dataset:
    """Prompt/completion rows whose `level` column is written as MATH writes it ("Level N")."""
    rows = []
    for level in levels:
        for i in range(rows_per_level):
            a, b = i, level * 3 + i
            rows.append(
                {
                    "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                    "completion": [{"role": "assistant", "content": f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}"}],
                    "level": level_format.format(level),
                    "row_id": f"{level}-{i}",
                }
            )
    return Dataset.from_list(rows)


@pytest.fixture
def leveled_dataset():
    return make_leveled_dataset()
