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

from dataclasses import dataclass, field

from trl import SFTConfig

from .curriculum import ADAPTER_TRANSITIONS, PRESETS, normalize_curriculum_stages, normalize_lora_ranks, parse_replay


@dataclass
class PLRSConfig(SFTConfig):
    r"""
    Configuration class for the [`CurriculumSFTTrainer`].

    It extends [`~trl.SFTConfig`] with the parameters of curriculum sequential fine-tuning and Progressive LoRA Rank
    Shrinking (PLRS). Only the new parameters are documented here; see [`~trl.SFTConfig`] for the others.

    `num_train_epochs` and `max_steps` apply **per stage**: with `num_train_epochs=5` every stage trains for five
    epochs over its own rows (plus replay), so a one-stage curriculum behaves like [`~trl.SFTTrainer`]. The learning
    rate schedule, warmup included, restarts at every stage.

    New parameters:
        curriculum_column (`str`, *optional*, defaults to `"level"`):
            Column of the training dataset that holds each row's level: an int, or a string like `"Level 3"` (as in
            MATH).
        curriculum_stages (`list[list[int]]`, *optional*):
            Levels trained at each stage, in order, e.g. `[[1, 2], [3], [4, 5]]`. On the command line, one argument
            per stage with its levels separated by commas: `--curriculum_stages 1,2 3 4,5`. `None` means one stage
            per distinct level, in ascending order (or a single stage with every level for the `direct` preset).
        drop_unknown_levels (`bool`, *optional*, defaults to `True`):
            Whether to drop the rows whose level cannot be parsed (MATH has two `"Level ?"` rows), logging how many
            were dropped. When `False`, such rows raise an error.
        replay (`str` or `float`, *optional*):
            What each stage replays of the earlier stages' rows: `"none"`, `"full"` (every row of every earlier
            stage), or a fraction in (0, 1] (that share of each earlier stage's rows, sampled with `seed` and drawn
            afresh at every stage). `None` takes the preset's value, or `"full"` without a preset.
        lora_ranks (`list[int]`, *optional*):
            LoRA rank of each stage's adapter, e.g. `[256, 128, 64, 32, 16]`, or a single rank for every stage. `None`
            takes the preset's ranks, or the `r` of the `peft_config` at every stage without a preset.
        lora_alpha_ratio (`float` or `None`, *optional*, defaults to `2.0`):
            Each stage's `lora_alpha` is this ratio times its rank (alpha = 2r, as in the paper). `None` keeps the
            `lora_alpha` of the `peft_config` at every stage.
        adapter_transition (`str`, *optional*, defaults to `"merge"`):
            What happens to a finished stage's adapter. `"merge"`: it is merged into the base weights and removed
            before the next stage's adapter is added. `"stack"`: it is kept, frozen and still active, beside the new
            one; use it on a quantized (4-bit or 8-bit) base, whose weights cannot absorb a merge.
        plrs_preset (`str`, *optional*):
            One of the paper's six baselines, filling `curriculum_stages`, `replay` and `lora_ranks`: `"direct"`
            (B1), `"seq_no_replay"` (B2), `"seq_no_replay_shrink"` (B3), `"seq_full_replay"` (B4), `"replay_shrink"`
            (B5) and `"replay_shrink_no_final"` (B6). A field that you set explicitly wins over the preset's value.
    """

    curriculum_column: str = field(
        default="level",
        metadata={"help": "Column of the training dataset that holds each row's level (an int or 'Level N')."},
    )
    curriculum_stages: list[str] | None = field(
        default=None,
        metadata={
            "help": "Levels trained at each stage, in order. On the command line, one argument per stage with its "
            "levels separated by commas, e.g. `--curriculum_stages 1,2 3 4,5`. Default: one stage per level."
        },
    )
    drop_unknown_levels: bool = field(
        default=True,
        metadata={"help": "Drop rows whose level cannot be parsed (logging the count) instead of raising an error."},
    )
    replay: str | None = field(
        default=None,
        metadata={
            "help": "Replay of earlier stages' rows: 'none', 'full', or a fraction in (0, 1] sampled afresh at each "
            "stage. Default: the preset's value, or 'full' without a preset."
        },
    )
    lora_ranks: list[int] | None = field(
        default=None,
        metadata={
            "help": "LoRA rank per stage (e.g. `256 128 64 32 16`), or one rank for every stage. Default: the "
            "preset's ranks, or the `peft_config` rank at every stage."
        },
    )
    lora_alpha_ratio: float | None = field(
        default=2.0,
        metadata={"help": "lora_alpha = ratio x rank at every stage. `None` keeps the peft_config's lora_alpha."},
    )
    adapter_transition: str = field(
        default="merge",
        metadata={
            "help": "What happens to a finished stage's adapter: merged into the base weights ('merge') or kept "
            "frozen and active ('stack', required on a quantized base).",
            "choices": list(ADAPTER_TRANSITIONS),
        },
    )
    plrs_preset: str | None = field(
        default=None,
        metadata={
            "help": "One of the paper's six baselines; explicitly set fields win over the preset.",
            "choices": list(PRESETS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.plrs_preset is not None and self.plrs_preset not in PRESETS:
            raise ValueError(
                f"`plrs_preset` must be one of {list(PRESETS)}, but the value passed is {self.plrs_preset!r}. "
                "Pick one of those baselines, or leave it unset and set `curriculum_stages`, `replay` and `lora_ranks`."
            )
        if self.adapter_transition not in ADAPTER_TRANSITIONS:
            raise ValueError(
                f"`adapter_transition` must be one of {list(ADAPTER_TRANSITIONS)}, but the value passed is "
                f"{self.adapter_transition!r}. Use 'merge' for a full-precision base, 'stack' for a quantized one."
            )
        if self.lora_alpha_ratio is not None and not self.lora_alpha_ratio > 0:
            raise ValueError(
                f"`lora_alpha_ratio` must be a positive number, but the value passed is {self.lora_alpha_ratio!r}. "
                "Use e.g. 2.0 (alpha = 2r, as in the paper), or None to keep the peft_config's lora_alpha."
            )
        if self.packing:
            raise ValueError(
                "`packing=True` is not supported by the curriculum: packed sequences mix rows of different levels, "
                "so stages could not select their rows. Set `packing=False`."
            )
        self.curriculum_stages = normalize_curriculum_stages(self.curriculum_stages)
        self.lora_ranks = normalize_lora_ranks(self.lora_ranks)
        self.replay = parse_replay(self.replay)
