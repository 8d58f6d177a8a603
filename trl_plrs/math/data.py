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
MATH data: loading (hub or local files), TRL's conversational prompt/completion format, and a synthetic leveled
dataset for offline demos and tests.

>>> from trl_plrs.data import split_train_validation
>>> from trl_plrs.math import make_synthetic_math, to_prompt_completion
>>> dataset = make_synthetic_math(num_per_level=20)
>>> splits = split_train_validation(dataset, validation_size=0.1, seed=0)
>>> train_dataset = splits["train"].map(to_prompt_completion)
"""

import glob
import json
import logging
import os
import random
from collections.abc import Iterable

from datasets import Dataset, concatenate_datasets, load_dataset

from ..curriculum import dataset_levels
from .grading import extract_boxed_answer


logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful math assistant. Solve the problem step by step, then give the final answer in \\boxed{}."
)

MATH_COLUMNS = ("problem", "solution", "answer", "level", "type", "unique_id")

# The hub copies of MATH that `load_math` knows. EleutherAI's copy has one config per subject folder.
HENDRYCKS_MATH_SUBJECT_CONFIGS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
_PER_SUBJECT_HUB_DATASETS = {"EleutherAI/hendrycks_math": HENDRYCKS_MATH_SUBJECT_CONFIGS}


def load_math(
    path_or_name: str,
    split: str = "test",
    drop_unknown_levels: bool = True,
    cache_dir: str | None = None,
) -> Dataset:
    """
    Load MATH (or any dataset with its columns) from local files or from the Hugging Face Hub.

    Local sources:
    - a `.jsonl` or `.json` file with one record per problem (`split` is ignored);
    - a folder of per-problem JSON files as in the original release (`<folder>/<split>/<subject>/<id>.json`, or
      `<folder>/<subject>/<id>.json` when the folder has no `<split>` subfolder); `unique_id` is then the path
      relative to the release root, e.g. `"test/algebra/1.json"`, as PRM800K writes it.

    Hub sources: `"EleutherAI/hendrycks_math"` (its seven per-subject configs are concatenated),
    `"DigitalLearningGmbH/MATH-lighteval"`, or any other dataset id with `problem`/`solution`/`level`/`type` columns.

    Args:
        path_or_name (`str`):
            Local file or folder, or a dataset id on the Hub.
        split (`str`, *optional*, defaults to `"test"`):
            Split to load (`"train"` or `"test"`).
        drop_unknown_levels (`bool`, *optional*, defaults to `True`):
            Drop rows whose level does not parse (MATH train has two `"Level ?"` rows) and log how many. If `False`,
            such rows raise a `ValueError`.
        cache_dir (`str`, *optional*):
            Cache folder passed to [`~datasets.load_dataset`] for Hub sources.

    Returns:
        [`~datasets.Dataset`]: Columns `problem`, `solution`, `answer` (content of the last `\\boxed{}` of the
        solution), `level` (`int`), `type`, and `unique_id` when the source has it.
    """
    if os.path.isfile(path_or_name):
        dataset = load_dataset("json", data_files=path_or_name, split="train")
    elif os.path.isdir(path_or_name):
        dataset = _load_problem_folder(path_or_name, split)
    elif path_or_name in _PER_SUBJECT_HUB_DATASETS:
        dataset = concatenate_datasets(
            [
                load_dataset(path_or_name, config, split=split, cache_dir=cache_dir)
                for config in _PER_SUBJECT_HUB_DATASETS[path_or_name]
            ]
        )
    else:
        dataset = load_dataset(path_or_name, split=split, cache_dir=cache_dir)
    return standardize_math(dataset, drop_unknown_levels=drop_unknown_levels)


def _load_problem_folder(folder: str, split: str) -> Dataset:
    split_folder = os.path.join(folder, split)
    root = folder
    if os.path.isdir(split_folder):
        search_folder = split_folder
    else:
        search_folder = folder
        root = os.path.dirname(os.path.normpath(folder))
    paths = sorted(glob.glob(os.path.join(search_folder, "**", "*.json"), recursive=True))
    if not paths:
        raise ValueError(
            f"`path_or_name` is a folder, but {search_folder!r} holds no `.json` files. Pass a `.jsonl` file or a "
            "folder laid out like the original MATH release (`<folder>/<split>/<subject>/<id>.json`)."
        )
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        record["unique_id"] = os.path.relpath(path, root).replace(os.sep, "/")
        records.append(record)
    return Dataset.from_list(records)


def standardize_math(dataset: Dataset, drop_unknown_levels: bool = True) -> Dataset:
    """
    Bring a MATH-like dataset to the columns `problem`, `solution`, `answer`, `level` (`int`), `type` (and
    `unique_id` when present); other columns are kept.

    `answer` is computed from the solution (last `\\boxed{}`) when the source has no `answer` column.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with at least `problem`, `solution` and `level` columns.
        drop_unknown_levels (`bool`, *optional*, defaults to `True`):
            Drop rows whose level does not parse (such as `"Level ?"`) and log how many; if `False`, raise instead.
    """
    missing = [column for column in ("problem", "solution", "level") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"`dataset` must have the columns `problem`, `solution` and `level`, but {missing} are missing "
            f"(columns: {dataset.column_names}). Rename the columns of your copy of MATH to these names."
        )
    levels = dataset_levels(dataset, "level")
    unknown = [index for index, level in enumerate(levels) if level is None]
    if unknown:
        if not drop_unknown_levels:
            ids = dataset["unique_id"] if "unique_id" in dataset.column_names else list(range(len(dataset)))
            shown = [ids[index] for index in unknown[:10]]
            raise ValueError(
                f"{len(unknown)} rows have a level that does not parse (rows {shown}), e.g. "
                f"{dataset[unknown[0]]['level']!r}. Pass `drop_unknown_levels=True` to drop them, or fix their "
                "`level` values."
            )
        logger.info(f"Dropped {len(unknown)} rows whose level does not parse (such as 'Level ?').")
        keep = [index for index, level in enumerate(levels) if level is not None]
        dataset = dataset.select(keep)
        levels = [levels[index] for index in keep]

    dataset = dataset.remove_columns("level").add_column("level", levels)
    if "answer" not in dataset.column_names:
        answers = [extract_boxed_answer(solution) for solution in dataset["solution"]]
        dataset = dataset.add_column("answer", answers)
    if "type" not in dataset.column_names:
        dataset = dataset.add_column("type", [""] * len(dataset))
    ordered = [column for column in MATH_COLUMNS if column in dataset.column_names]
    others = [column for column in dataset.column_names if column not in ordered]
    return dataset.select_columns(ordered + others)


def build_prompt_messages(problem: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """
    The conversational prompt of one problem: a system message (if `system_prompt` is not `None`) and a user message.
    The tokenizer's chat template turns it into text, so no special tokens are written by hand here.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": problem})
    return messages


def to_prompt_completion(example: dict, system_prompt: str | None = SYSTEM_PROMPT) -> dict:
    """
    Turn one MATH row into TRL's conversational prompt/completion format, for [`~datasets.Dataset.map`].

    The other columns (`level`, `type`, ...) are kept by `map`, so the curriculum engine can still select by level.
    [`~trl.SFTTrainer`] then puts the loss on the completion only (`completion_only_loss` defaults to on for
    prompt/completion data).

    Args:
        example (`dict`):
            A row with `problem` and `solution`.
        system_prompt (`str` or `None`, *optional*, defaults to [`SYSTEM_PROMPT`]):
            System message asking for the final answer in `\\boxed{}`; `None` for models without a system role.

    Example:

    ```python
    >>> to_prompt_completion({"problem": "What is 1 + 1?", "solution": "1 + 1 = 2. \\\\boxed{2}"})["completion"]
    [{'role': 'assistant', 'content': '1 + 1 = 2. \\\\boxed{2}'}]
    ```
    """
    return {
        "prompt": build_prompt_messages(example["problem"], system_prompt),
        "completion": [{"role": "assistant", "content": example["solution"]}],
    }


# --------------------------------------------------------------------------------------------------------------------
# Synthetic leveled problems


def _level_1(rng: random.Random) -> tuple[str, str, int, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b, "Addition"


def _level_2(rng: random.Random) -> tuple[str, str, int, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b, "Addition"
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", f"{a} - {b} = {a - b}.", a - b, "Subtraction"


def _level_3(rng: random.Random) -> tuple[str, str, int, str]:
    a, b = rng.randint(12, 99), rng.randint(3, 9)
    tens, units = a - a % 10, a % 10
    solution = f"{a} * {b} = {tens} * {b} + {units} * {b} = {tens * b} + {units * b} = {a * b}."
    return f"What is {a} * {b}?", solution, a * b, "Multiplication"


def _level_4(rng: random.Random) -> tuple[str, str, int, str]:
    x, a, b = rng.randint(2, 20), rng.randint(2, 9), rng.randint(10, 99)
    c = a * x + b
    solution = (
        f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}. "
        f"Divide both sides by {a}: x = {c - b} / {a} = {x}. "
        f"Check: {a} * {x} + {b} = {a * x} + {b} = {c}."
    )
    return f"Solve for x: {a}x + {b} = {c}.", solution, x, "Linear Equations"


def _level_5(rng: random.Random) -> tuple[str, str, int, str]:
    name = rng.choice(["Ana", "Ben", "Carla", "Dev", "Eli", "Farah"])
    item = rng.choice(["apples", "marbles", "stickers", "pencils"])
    start, bags, per_bag = rng.randint(10, 60), rng.randint(2, 9), rng.randint(3, 12)
    bought = bags * per_bag
    given = rng.randint(1, start + bought - 1)
    found = rng.randint(10, 99)
    answer = start + bought - given + found
    problem = (
        f"{name} has {start} {item}. {name} buys {bags} bags with {per_bag} {item} each, "
        f"gives away {given} {item}, then finds {found} more. How many {item} does {name} have now?"
    )
    solution = (
        f"The bags hold {bags} * {per_bag} = {bought} {item}. "
        f"After buying, {name} has {start} + {bought} = {start + bought}. "
        f"After giving away {given}, {name} has {start + bought} - {given} = {start + bought - given}. "
        f"After finding {found}, {name} has {start + bought - given} + {found} = {answer}."
    )
    return problem, solution, answer, "Word Problems"


_SYNTHETIC_LEVELS = {1: _level_1, 2: _level_2, 3: _level_3, 4: _level_4, 5: _level_5}


def make_synthetic_math(num_per_level: int = 100, levels: Iterable[int] = (1, 2, 3, 4, 5), seed: int = 0) -> Dataset:
    """
    A deterministic synthetic MATH-like dataset whose difficulty grows with the level, for offline demos and tests.

    | level | problem | example solution |
    |---|---|---|
    | 1 | one-digit addition | `3 + 4 = 7. \\boxed{7}` |
    | 2 | two-digit addition or subtraction | `47 - 18 = 29. \\boxed{29}` |
    | 3 | two-digit by one-digit multiplication, in three steps | `23 * 7 = 20 * 7 + 3 * 7 = 140 + 21 = 161. ...` |
    | 4 | a linear equation `ax + b = c`, solved and checked | `Subtract 15 from both sides: 3x = 30 - 15 = 15. ...` |
    | 5 | a four-step word problem (multiply, add, subtract, add) | `The bags hold 3 * 7 = 21 apples. After buying, ...` |

    Level 1 is short and regular so that a tiny model learns it in a minute or two on CPU.

    Args:
        num_per_level (`int`, *optional*, defaults to `100`):
            Rows per level.
        levels (`Iterable[int]`, *optional*, defaults to `(1, 2, 3, 4, 5)`):
            Levels to generate, each in 1-5.
        seed (`int`, *optional*, defaults to `0`):
            Seed; each level draws from its own generator, so a level's rows do not depend on the other levels asked.

    Returns:
        [`~datasets.Dataset`]: The columns of [`load_math`]: `problem`, `solution` (ending in `\\boxed{answer}`),
        `answer`, `level`, `type`, `unique_id` (`"synthetic/level_<level>/<index>"`).
    """
    levels = list(levels)
    unknown = [level for level in levels if level not in _SYNTHETIC_LEVELS]
    if unknown:
        raise ValueError(f"`levels` must be within {sorted(_SYNTHETIC_LEVELS)}, but {unknown} were passed.")
    if num_per_level < 1:
        raise ValueError(f"`num_per_level` must be a positive integer, but the value passed is {num_per_level}.")
    records = {column: [] for column in MATH_COLUMNS}
    for level in levels:
        # A string seed is hashed deterministically (unlike `hash()` of a tuple, which varies between runs).
        rng = random.Random(f"trl_plrs-synthetic-{seed}-{level}")
        for index in range(num_per_level):
            problem, steps, answer, problem_type = _SYNTHETIC_LEVELS[level](rng)
            records["problem"].append(problem)
            records["solution"].append(f"{steps} \\boxed{{{answer}}}")
            records["answer"].append(str(answer))
            records["level"].append(level)
            records["type"].append(problem_type)
            records["unique_id"].append(f"synthetic/level_{level}/{index}")
    return Dataset.from_dict(records)


def math_corpus(dataset: Dataset, system_prompt: str | None = SYSTEM_PROMPT) -> list[str]:
    """
    Texts (system prompt, problems, solutions) to train a local tokenizer on, e.g.
    `build_tokenizer(corpus=math_corpus(make_synthetic_math()))` from [`trl_plrs.testing`].
    """
    corpus = [system_prompt] if system_prompt is not None else []
    return corpus + list(dataset["problem"]) + list(dataset["solution"])
