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

import pytest

from trl_plrs.curriculum import (
    PRESETS,
    build_stages,
    dataset_levels,
    normalize_curriculum_stages,
    normalize_lora_ranks,
    parse_level,
    parse_replay,
    resolve_replay,
)


@pytest.mark.parametrize(
    "value, expected",
    [(3, 3), ("3", 3), ("Level 3", 3), ("level 5", 5), (" Level 2 ", 2), (4.0, 4)],
)
def test_parse_level_accepts_ints_and_math_strings(value, expected):
    assert parse_level(value) == expected


@pytest.mark.parametrize("value", ["Level ?", "", None, "hard", 2.5, True, [1]])
def test_parse_level_returns_none_for_non_levels(value):
    assert parse_level(value) is None


def test_normalize_curriculum_stages_accepts_lists_and_command_line_strings():
    assert normalize_curriculum_stages([[1, 2], [3], [4, 5]]) == [[1, 2], [3], [4, 5]]
    assert normalize_curriculum_stages(["1,2", "3", "4, 5"]) == [[1, 2], [3], [4, 5]]
    assert normalize_curriculum_stages([1, 2]) == [[1], [2]]
    assert normalize_curriculum_stages(None) is None


def test_normalize_curriculum_stages_rejects_bad_levels_and_duplicates():
    with pytest.raises(ValueError, match="`curriculum_stages`.*not a list of integer levels"):
        normalize_curriculum_stages([[1], ["x"]])
    with pytest.raises(ValueError, match="`curriculum_stages` names a level in more than one stage"):
        normalize_curriculum_stages([[1, 2], [2, 3]])


@pytest.mark.parametrize("ranks", [[0], [8, -1], [8, 2.5], [True]])
def test_normalize_lora_ranks_rejects_non_positive_integers(ranks):
    with pytest.raises(ValueError, match="`lora_ranks` must hold positive integers"):
        normalize_lora_ranks(ranks)


def test_normalize_lora_ranks_broadcasts_a_single_int():
    assert normalize_lora_ranks(16) == [16]
    assert normalize_lora_ranks([256, 128]) == [256, 128]


@pytest.mark.parametrize("value, expected", [("none", "none"), ("full", "full"), (0.1, 0.1), ("0.25", 0.25), (1, 1.0)])
def test_parse_replay(value, expected):
    assert parse_replay(value) == expected


@pytest.mark.parametrize("value", [0, 0.0, 1.5, -0.2, "some", "nan", True])
def test_parse_replay_rejects_values_outside_modes_and_unit_interval(value):
    with pytest.raises(ValueError, match="`replay` must be 'none', 'full' or a fraction in \\(0, 1\\]"):
        parse_replay(value)


def test_resolve_replay_prefers_explicit_value_then_preset_then_full():
    assert resolve_replay(0.5, "seq_no_replay") == 0.5
    assert resolve_replay(None, "seq_no_replay") == "none"
    assert resolve_replay(None, None) == "full"


def test_build_stages_defaults_to_one_stage_per_level_with_the_peft_rank():
    stages = build_stages([3, 1, 2, 1], None, None, lora_alpha_ratio=None, default_rank=8, default_alpha=16)
    assert [stage.levels for stage in stages] == [(1,), (2,), (3,)]
    assert [stage.index for stage in stages] == [0, 1, 2]
    assert {(stage.lora_rank, stage.lora_alpha) for stage in stages} == {(8, 16.0)}


def test_build_stages_alpha_ratio():
    stages = build_stages([1, 2], None, [64, 16], lora_alpha_ratio=2.0, default_rank=8, default_alpha=16)
    assert [(stage.lora_rank, stage.lora_alpha) for stage in stages] == [(64, 128.0), (16, 32.0)]
    stages = build_stages([1, 2], None, [64, 16], lora_alpha_ratio=0.5, default_rank=8, default_alpha=16)
    assert [stage.lora_alpha for stage in stages] == [32.0, 8.0]


def test_build_stages_keeps_the_users_alpha_ratio_by_default():
    # LoraConfig(r=8, lora_alpha=32): alpha = 4r at every stage, whatever its rank.
    stages = build_stages([1, 2], None, [64, 16], lora_alpha_ratio=None, default_rank=8, default_alpha=32)
    assert [stage.lora_alpha for stage in stages] == [256.0, 64.0]
    # One stage at the config's rank trains with the config's own alpha, as SFTTrainer would.
    (stage,) = build_stages([1], None, None, lora_alpha_ratio=None, default_rank=8, default_alpha=32)
    assert (stage.lora_rank, stage.lora_alpha) == (8, 32.0)
    # Presets keep the paper's alpha = 2r unless the ratio is set.
    stages = build_stages([1, 2, 3, 4, 5], None, None, None, default_rank=8, default_alpha=32, preset="replay_shrink")
    assert [stage.lora_alpha for stage in stages] == [512.0, 256.0, 128.0, 64.0, 32.0]
    stages = build_stages([1, 2, 3, 4, 5], None, None, 1.0, default_rank=8, default_alpha=32, preset="replay_shrink")
    assert [stage.lora_alpha for stage in stages] == [256.0, 128.0, 64.0, 32.0, 16.0]


def test_build_stages_groups_levels():
    stages = build_stages([1, 2, 3, 4, 5], [[1, 2], [3], [4, 5]], [32], 2.0, default_rank=8, default_alpha=16)
    assert [stage.levels for stage in stages] == [(1, 2), (3,), (4, 5)]
    assert [stage.lora_rank for stage in stages] == [32, 32, 32]


@pytest.mark.parametrize(
    "preset, levels, ranks",
    [
        ("direct", [(1, 2, 3, 4, 5)], [32]),
        ("seq_no_replay", [(1,), (2,), (3,), (4,), (5,)], [32] * 5),
        ("seq_no_replay_shrink", [(1,), (2,), (3,), (4,), (5,)], [256, 128, 64, 32, 16]),
        ("seq_full_replay", [(1,), (2,), (3,), (4,), (5,)], [32] * 5),
        ("replay_shrink", [(1,), (2,), (3,), (4,), (5,)], [256, 128, 64, 32, 16]),
        ("replay_shrink_no_final", [(1,), (2,), (3,), (4,), (5,)], [256, 128, 64, 32, 32]),
    ],
)
def test_presets_match_the_paper_baselines(preset, levels, ranks):
    stages = build_stages([1, 2, 3, 4, 5], None, None, 2.0, default_rank=8, default_alpha=16, preset=preset)
    assert [stage.levels for stage in stages] == levels
    assert [stage.lora_rank for stage in stages] == ranks
    assert [stage.lora_alpha for stage in stages] == [2.0 * rank for rank in ranks]


def test_preset_replay_values():
    assert {name: preset.replay for name, preset in PRESETS.items()} == {
        "direct": "none",
        "seq_no_replay": "none",
        "seq_no_replay_shrink": "none",
        "seq_full_replay": "full",
        "replay_shrink": "full",
        "replay_shrink_no_final": "full",
    }


def test_explicit_fields_win_over_the_preset():
    stages = build_stages([1, 2, 3], [[1, 2], [3]], [64, 8], 2.0, default_rank=8, default_alpha=16, preset="direct")
    assert [(stage.levels, stage.lora_rank) for stage in stages] == [((1, 2), 64), ((3,), 8)]


def test_preset_ranks_must_match_the_number_of_levels():
    with pytest.raises(ValueError, match="`lora_ranks` has 5 entries .* but the curriculum has 3 stages"):
        build_stages([1, 2, 3], None, None, 2.0, default_rank=8, default_alpha=16, preset="replay_shrink")


def test_build_stages_rejects_levels_without_rows():
    with pytest.raises(ValueError, match="`curriculum_stages` names levels \\[4\\] that have no rows"):
        build_stages([1, 2, 3], [[1], [4]], None, 2.0, default_rank=8, default_alpha=16)


def test_build_stages_rejects_empty_levels():
    with pytest.raises(ValueError, match="no row with a valid level"):
        build_stages([], None, None, 2.0, default_rank=8, default_alpha=16)


@pytest.mark.parametrize("stages", [[], ()])
def test_empty_curriculum_stages_is_refused(stages):
    with pytest.raises(ValueError, match="`curriculum_stages` must list at least one stage, but the value passed is"):
        normalize_curriculum_stages(stages)


def test_class_label_levels_are_read_by_name():
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "level": ClassLabel(names=["Level 3", "Level 1", "Level 2"])})
    dataset = Dataset.from_dict({"text": ["a", "b", "c"], "level": [0, 1, 2]}, features=features)
    # Class index 0 is "Level 3": the curriculum must train it last, not first.
    assert dataset_levels(dataset, "level") == [3, 1, 2]
