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
"""A seeded validation split taken from the training data, stratified by level (any dataset with a level column)."""

import logging

from datasets import ClassLabel, Dataset, DatasetDict


logger = logging.getLogger(__name__)


def split_train_validation(
    dataset: Dataset, validation_size: float | int = 0.1, seed: int = 0, stratify_by_column: str = "level"
) -> DatasetDict:
    """
    A seeded validation split taken from the TRAIN data, stratified by level, for early stopping and model selection
    (the test split must never be used for either).

    Uses [`~datasets.Dataset.train_test_split`] with `stratify_by_column`; if a level has too few rows to stratify,
    it warns and falls back to an unstratified seeded split.

    Args:
        dataset ([`~datasets.Dataset`]):
            Train rows with an integer `level` column.
        validation_size (`float` or `int`, *optional*, defaults to `0.1`):
            Fraction (in `(0, 1)`) or number of rows held out for validation.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the split.
        stratify_by_column (`str`, *optional*, defaults to `"level"`):
            Column whose value proportions the split keeps.

    Returns:
        [`~datasets.DatasetDict`]: `"train"` and `"validation"`, with the same columns as `dataset`.
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float)):
        raise ValueError(f"`validation_size` must be a float in (0, 1) or a positive int, got {validation_size!r}.")
    if isinstance(validation_size, float) and not 0 < validation_size < 1:
        raise ValueError(
            f"`validation_size` as a fraction must be in (0, 1), but the value passed is {validation_size}. "
            "Pass e.g. 0.1, or an int number of rows."
        )
    if isinstance(validation_size, int) and not 0 < validation_size < len(dataset):
        raise ValueError(
            f"`validation_size` as a number of rows must be in [1, {len(dataset) - 1}] for this dataset of "
            f"{len(dataset)} rows, but the value passed is {validation_size}."
        )
    if stratify_by_column not in dataset.column_names:
        raise ValueError(
            f"`stratify_by_column` is {stratify_by_column!r}, which is not a column of the dataset "
            f"({dataset.column_names})."
        )
    strata = sorted(set(dataset[stratify_by_column]))
    stratum_column = "__stratum__"
    keyed = dataset.add_column(stratum_column, [strata.index(value) for value in dataset[stratify_by_column]])
    keyed = keyed.cast_column(stratum_column, ClassLabel(names=[str(value) for value in strata]))
    try:
        splits = keyed.train_test_split(test_size=validation_size, seed=seed, stratify_by_column=stratum_column)
    except ValueError as error:
        logger.warning(
            f"Could not stratify the validation split by `{stratify_by_column}` ({error}); splitting unstratified."
        )
        splits = keyed.train_test_split(test_size=validation_size, seed=seed)
    return DatasetDict(
        train=splits["train"].remove_columns(stratum_column),
        validation=splits["test"].remove_columns(stratum_column),
    )
