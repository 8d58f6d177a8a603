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
"""Pure functions that turn a curriculum configuration into a list of stages: levels, LoRA rank and alpha."""

import re
from dataclasses import dataclass

from datasets import ClassLabel


_LEVEL_PATTERN = re.compile(r"^\s*(?:level\s*)?(-?\d+)\s*$", re.IGNORECASE)


def parse_level(value) -> int | None:
    """
    Parse a curriculum level: an int, or a string such as `"3"` or `"Level 3"` (as MATH writes it).

    Returns `None` for values that name no level, such as MATH's `"Level ?"`, `None` or `""`.

    >>> parse_level("Level 3"), parse_level(2), parse_level("Level ?")
    (3, 2, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        match = _LEVEL_PATTERN.match(value)
        return int(match.group(1)) if match else None
    return None


def dataset_levels(dataset, column: str) -> list[int | None]:
    """
    [`parse_level`] of every row of `dataset[column]`. The column is read in one batch: iterating a `datasets`
    column formats it row by row, about ten times slower on MATH. A `ClassLabel` column is read by its names (e.g.
    `["Level 3", "Level 1", "Level 2"]`), not by its class indices, which follow the names' order.
    """
    values = dataset[column][:]
    feature = dataset.features.get(column) if getattr(dataset, "features", None) else None
    if isinstance(feature, ClassLabel):
        values = [feature.int2str(value) if value is not None and value >= 0 else None for value in values]
    return [parse_level(value) for value in values]


# Every preset trains with the paper's alpha = 2r.
PRESET_LORA_ALPHA_RATIO = 2.0
REPLAY_MODES = ("none", "full")


@dataclass(frozen=True)
class Preset:
    """One of the paper's baselines: how the levels are grouped into stages, the replay, and the rank schedule."""

    name: str
    one_stage: bool
    replay: str
    lora_ranks: tuple[int, ...]


# The six baselines of the paper (B1-B6), in its order.
PRESETS = {
    preset.name: preset
    for preset in (
        Preset("direct", one_stage=True, replay="none", lora_ranks=(32,)),
        Preset("seq_no_replay", one_stage=False, replay="none", lora_ranks=(32,)),
        Preset("seq_no_replay_shrink", one_stage=False, replay="none", lora_ranks=(256, 128, 64, 32, 16)),
        Preset("seq_full_replay", one_stage=False, replay="full", lora_ranks=(32,)),
        Preset("replay_shrink", one_stage=False, replay="full", lora_ranks=(256, 128, 64, 32, 16)),
        Preset("replay_shrink_no_final", one_stage=False, replay="full", lora_ranks=(256, 128, 64, 32, 32)),
    )
}


@dataclass(frozen=True)
class Stage:
    """
    One stage of the curriculum.

    Stages are numbered from 1 wherever they are named (folders `stage-1`..., adapter names, logs, summaries, tables,
    plots), like MATH's levels: by default stage k trains level k. `index` (from 0) is only for indexing Python lists
    such as `lora_ranks`.

    Args:
        index (`int`): Position of the stage, from 0.
        levels (`tuple[int, ...]`): Levels whose rows this stage trains on (before replay).
        lora_rank (`int` or `None`): Rank of the stage's fresh LoRA adapter; `None` when the curriculum carries one set
            of trainable parameters through every stage (full fine-tuning, or a PEFT method other than LoRA).
        lora_alpha (`float` or `None`): Alpha of that adapter.
    """

    index: int
    levels: tuple[int, ...]
    lora_rank: int | None
    lora_alpha: float | None

    @property
    def number(self) -> int:
        """The stage's number, from 1, as shown in folder names, logs and tables."""
        return self.index + 1

    @property
    def rank_label(self) -> str:
        """`", r=16"` for a stage with a fresh LoRA adapter; empty when the stage carries on the same parameters."""
        return "" if self.lora_rank is None else f", r={self.lora_rank}"


def normalize_curriculum_stages(stages) -> list[list[int]] | None:
    """
    Bring `curriculum_stages` to a list of lists of ints. Accepts lists of ints, single ints, and the command line's
    strings of comma-separated levels (`["1,2", "3"]`).

    >>> normalize_curriculum_stages(["1,2", "3", [4, 5]])
    [[1, 2], [3], [4, 5]]
    """
    if stages is None:
        return None
    if isinstance(stages, str):
        stages = stages.split(";") if ";" in stages else [stages]
    if not isinstance(stages, (list, tuple)) or len(stages) == 0:
        raise ValueError(
            f"`curriculum_stages` must list at least one stage, but the value passed is {stages!r}. Write e.g. "
            "[[1, 2], [3], [4, 5]] (Python/YAML) or `--curriculum_stages 1,2 3 4,5` (command line), or leave it unset "
            "for one stage per level."
        )
    normalized = []
    for stage in stages:
        items = stage.split(",") if isinstance(stage, str) else stage if isinstance(stage, (list, tuple)) else [stage]
        levels = [parse_level(item.strip() if isinstance(item, str) else item) for item in items]
        if not levels or any(level is None for level in levels):
            raise ValueError(
                f"`curriculum_stages` must list the levels of each stage, but the stage {stage!r} in {stages!r} is "
                "not a list of integer levels. Write e.g. [[1, 2], [3], [4, 5]] (Python/YAML) or "
                "`--curriculum_stages 1,2 3 4,5` (command line)."
            )
        normalized.append(levels)
    flat = [level for levels in normalized for level in levels]
    if len(flat) != len(set(flat)):
        raise ValueError(
            f"`curriculum_stages` names a level in more than one stage: {normalized}. Each level belongs to one stage; "
            "use `replay` to train on earlier levels again."
        )
    return normalized


def normalize_lora_ranks(lora_ranks) -> list[int] | None:
    """Bring `lora_ranks` to a list of positive ints; a single int means that rank at every stage."""
    if lora_ranks is None:
        return None
    ranks = [lora_ranks] if isinstance(lora_ranks, (int, str)) else list(lora_ranks)
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(
                f"`lora_ranks` must hold positive integers, but the value passed is {lora_ranks!r} (bad rank: "
                f"{rank!r}). Use e.g. [256, 128, 64, 32, 16], or a single rank for every stage."
            )
    if not ranks:
        raise ValueError("`lora_ranks` is empty. Give one rank per stage, or a single rank for every stage.")
    return ranks


def parse_replay(replay) -> str | float | None:
    """
    Parse `replay`: `"none"`, `"full"`, or a fraction in (0, 1] (also given as a string, as the command line does).

    >>> parse_replay("0.25"), parse_replay("full")
    (0.25, 'full')
    """
    if replay is None or replay in REPLAY_MODES:
        return replay
    fraction = replay
    if isinstance(replay, str):
        try:
            fraction = float(replay)
        except ValueError:
            fraction = None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(
            f"`replay` must be 'none', 'full' or a fraction in (0, 1], but the value passed is {replay!r}. "
            "Use e.g. replay=0.1 to replay a tenth of each earlier stage's rows."
        )
    return float(fraction)


def resolve_replay(replay: str | float | None, preset: str | None) -> str | float:
    """The replay in force: the explicit value, else the preset's, else `"full"`."""
    if replay is not None:
        return replay
    return PRESETS[preset].replay if preset is not None else "full"


def build_stages(
    available_levels: list[int],
    curriculum_stages: list[list[int]] | None,
    lora_ranks: list[int] | None,
    lora_alpha_ratio: float | None,
    default_rank: int | None,
    default_alpha: float | None,
    preset: str | None = None,
) -> list[Stage]:
    """
    Build the stages of a curriculum from the levels present in the data and the configuration.

    Explicit `curriculum_stages` and `lora_ranks` win over the preset's; without either, there is one stage per level
    (ascending) and every stage gets `default_rank`.

    Args:
        available_levels (`list[int]`): Distinct levels that have rows in the training data.
        curriculum_stages (`list[list[int]]` or `None`): Levels of each stage, or `None` for the default grouping.
        lora_ranks (`list[int]` or `None`): One rank per stage, or one rank for all stages.
        lora_alpha_ratio (`float` or `None`): alpha = ratio x rank at every stage. `None`: the preset's ratio
            ([`PRESET_LORA_ALPHA_RATIO`], the paper's alpha = 2r) with a preset, else `default_alpha / default_rank`,
            the ratio of the user's `peft_config` (so a one-stage curriculum trains with the config's own alpha).
        default_rank (`int` or `None`): Rank used when neither `lora_ranks` nor a preset gives one (the `peft_config`'s
            `r`); `None` without a fresh LoRA adapter per stage: every stage then has no rank (`lora_ranks` and the
            preset's ranks do not apply).
        default_alpha (`float` or `None`): The `peft_config`'s `lora_alpha`.
        preset (`str` or `None`): Name of a preset in [`PRESETS`].

    >>> [(s.levels, s.lora_rank, s.lora_alpha) for s in build_stages([1, 2], None, [64, 16], 2.0, 8, 16)]
    [((1,), 64, 128.0), ((2,), 16, 32.0)]
    >>> [(s.lora_rank, s.lora_alpha) for s in build_stages([1, 2], None, [64, 16], None, 8, 32)]  # the config's 4r
    [(64, 256.0), (16, 64.0)]
    """
    levels = sorted(set(available_levels))
    if not levels:
        raise ValueError("The training dataset has no row with a valid level, so the curriculum has no stage.")
    preset_config = PRESETS[preset] if preset is not None else None

    if curriculum_stages is not None:
        missing = [level for stage in curriculum_stages for level in stage if level not in levels]
        if missing:
            raise ValueError(
                f"`curriculum_stages` names levels {missing} that have no rows in the training dataset (levels "
                f"present: {levels}). Remove them from `curriculum_stages`, or add rows of those levels."
            )
        stage_levels = [tuple(stage) for stage in curriculum_stages]
    elif preset_config is not None and preset_config.one_stage:
        stage_levels = [tuple(levels)]
    else:
        stage_levels = [(level,) for level in levels]

    if default_rank is None:  # no LoRA adapter per stage: the stages' levels alone
        return [
            Stage(index=index, levels=stage, lora_rank=None, lora_alpha=None)
            for index, stage in enumerate(stage_levels)
        ]
    if lora_ranks is None and preset_config is not None:
        lora_ranks = list(preset_config.lora_ranks)
    if lora_ranks is None:
        ranks = [default_rank] * len(stage_levels)
    elif len(lora_ranks) == 1:
        ranks = lora_ranks * len(stage_levels)
    elif len(lora_ranks) == len(stage_levels):
        ranks = list(lora_ranks)
    else:
        raise ValueError(
            f"`lora_ranks` has {len(lora_ranks)} entries ({lora_ranks}) but the curriculum has {len(stage_levels)} "
            f"stages ({[list(s) for s in stage_levels]}). Give one rank per stage, or a single rank for every stage."
        )

    if lora_alpha_ratio is None:
        lora_alpha_ratio = PRESET_LORA_ALPHA_RATIO if preset_config is not None else default_alpha / default_rank
    return [
        Stage(index=index, levels=stage, lora_rank=rank, lora_alpha=float(lora_alpha_ratio * rank))
        for index, (stage, rank) in enumerate(zip(stage_levels, ranks))
    ]
