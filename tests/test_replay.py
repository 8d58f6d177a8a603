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

from collections import Counter

import pytest

from trl_plrs.curriculum import build_stages
from trl_plrs.replay import replay_sample_size, stage_row_indices


# MATH train's rows per level, scaled down by 10.
ROWS_PER_LEVEL = {1: 56, 2: 135, 3: 159, 4: 169, 5: 230}
ROW_LEVELS = [level for level, count in ROWS_PER_LEVEL.items() for _ in range(count)]
STAGES = build_stages(ROW_LEVELS, None, None, 2.0, default_rank=8, default_alpha=16)


def level_counts(indices):
    return Counter(ROW_LEVELS[index] for index in indices)


def test_no_replay_trains_on_the_stage_levels_only():
    for stage in STAGES:
        indices = stage_row_indices(ROW_LEVELS, STAGES, stage.index, "none", seed=0)
        assert level_counts(indices) == {stage.levels[0]: ROWS_PER_LEVEL[stage.levels[0]]}


def test_full_replay_is_cumulative():
    for stage in STAGES:
        indices = stage_row_indices(ROW_LEVELS, STAGES, stage.index, "full", seed=0)
        assert level_counts(indices) == {level: ROWS_PER_LEVEL[level] for level in range(1, stage.index + 2)}
        assert len(set(indices)) == len(indices)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_fraction_replay_takes_that_share_of_each_earlier_stage(fraction):
    for stage in STAGES:
        counts = level_counts(stage_row_indices(ROW_LEVELS, STAGES, stage.index, fraction, seed=7))
        expected = {level: replay_sample_size(ROWS_PER_LEVEL[level], fraction) for level in range(1, stage.index + 1)}
        expected[stage.index + 1] = ROWS_PER_LEVEL[stage.index + 1]
        assert counts == expected


def test_fraction_replay_is_reproducible_and_drawn_afresh_per_stage_and_seed():
    first = stage_row_indices(ROW_LEVELS, STAGES, 3, 0.2, seed=7)
    assert first == stage_row_indices(ROW_LEVELS, STAGES, 3, 0.2, seed=7)
    assert first != stage_row_indices(ROW_LEVELS, STAGES, 3, 0.2, seed=8)
    level_1 = set(range(ROWS_PER_LEVEL[1]))
    replayed_at_stage_2 = set(stage_row_indices(ROW_LEVELS, STAGES, 2, 0.2, seed=7)) & level_1
    replayed_at_stage_3 = set(first) & level_1
    assert replayed_at_stage_2 != replayed_at_stage_3


def test_replay_of_grouped_stages_samples_each_earlier_stage():
    row_levels = [1] * 10 + [2] * 30 + [3] * 20
    stages = build_stages(row_levels, [[1, 2], [3]], None, 2.0, default_rank=8, default_alpha=16)
    indices = stage_row_indices(row_levels, stages, 1, 0.5, seed=0)
    counts = Counter(row_levels[index] for index in indices)
    assert counts[3] == 20
    assert counts[1] + counts[2] == 20  # half of the 40 rows of stage 1


@pytest.mark.parametrize(
    "num_rows, fraction, expected", [(10, 0.1, 1), (3, 0.1, 1), (0, 0.5, 0), (7, 1.0, 7), (5, 0.5, 2)]
)
def test_replay_sample_size(num_rows, fraction, expected):
    assert replay_sample_size(num_rows, fraction) == expected
