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
"""Pure functions that pick the rows of each stage: its own levels plus the replay of earlier stages."""

from collections.abc import Sequence

import numpy as np

from .curriculum import Stage


def replay_sample_size(num_rows: int, fraction: float) -> int:
    """Rows replayed from an earlier stage of `num_rows` rows: `round(fraction * num_rows)`, at least one."""
    return min(num_rows, max(1, round(fraction * num_rows))) if num_rows else 0


def stage_row_indices(
    row_levels: Sequence[int], stages: Sequence[Stage], stage_index: int, replay: str | float, seed: int
) -> list[int]:
    """
    Indices of the rows that stage `stage_index` trains on: every row of its own levels, plus the replay.

    `replay="none"` adds nothing, `"full"` adds every row of every earlier stage, and a fraction adds that share of
    each earlier stage's rows, sampled without replacement. The sample depends on `seed` and on the stage, so a run
    is reproducible while every stage draws different old rows.

    Args:
        row_levels (`Sequence[int]`): Level of each row of the (already tokenized) training dataset.
        stages (`Sequence[Stage]`): The curriculum.
        stage_index (`int`): The stage whose rows to pick.
        replay (`str` or `float`): `"none"`, `"full"` or a fraction in (0, 1].
        seed (`int`): Seed of the fraction sampling.

    Returns:
        `list[int]`: Sorted row indices (the trainer's sampler shuffles them).

    >>> stages = [Stage(0, (1,), 8, 16.0), Stage(1, (2,), 4, 8.0)]
    >>> stage_row_indices([1, 2, 1, 2, 1], stages, 1, "full", seed=0)
    [0, 1, 2, 3, 4]
    >>> stage_row_indices([1, 2, 1, 2, 1], stages, 1, "none", seed=0)
    [1, 3]
    """
    row_levels = np.asarray(row_levels)
    own = np.flatnonzero(np.isin(row_levels, stages[stage_index].levels))
    selected = [own]
    if replay != "none":
        rng = np.random.default_rng([seed, stage_index])
        for earlier in stages[:stage_index]:
            earlier_rows = np.flatnonzero(np.isin(row_levels, earlier.levels))
            if replay != "full":
                size = replay_sample_size(len(earlier_rows), replay)
                earlier_rows = rng.choice(earlier_rows, size=size, replace=False)
            selected.append(earlier_rows)
    return np.sort(np.concatenate(selected)).tolist()
