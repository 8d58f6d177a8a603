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

import torch
from accelerate.logging import get_logger
from transformers.utils import is_torch_bf16_gpu_available
from trl import SFTConfig

from .curriculum import PRESETS, normalize_curriculum_stages, normalize_lora_ranks, parse_replay
from .difficulty import DIFFICULTY_METHODS, method_name
from .trainer_internals import move_to_activation_checkpointing
from .transitions import ADAPTER_TRANSITIONS


logger = get_logger(__name__)


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
        curriculum_difficulty (`str` or `Callable[[dict], float]`, *optional*):
            For datasets without levels: how to score each training row's difficulty (higher is harder) instead of
            reading `curriculum_column`. `"base_loss"`: the base model's mean per-token loss on the row's completion
            tokens (the tokens the curriculum trains on), one forward pass per row before training; `"length"`: the
            number of those tokens; or a callable that takes a prepared row (your columns plus `input_ids` and
            `labels`) and returns a float. The rows are cut into `curriculum_num_levels` equal-size levels by score,
            level 1 the easiest, ties broken by row index; the scores and levels go to `output_dir/difficulty.csv`.
            When the dataset also has `curriculum_column`, the computed levels win (a warning says so). An
            `eval_dataset` is scored the same way and binned with the training rows' thresholds. `None` (the
            default): read the levels from `curriculum_column`.
        curriculum_num_levels (`int`, *optional*, defaults to `5`):
            Number of difficulty levels computed with `curriculum_difficulty`.
        replay (`str` or `float`, *optional*):
            What each stage replays of the earlier stages' rows: `"none"`, `"full"` (every row of every earlier
            stage), or a fraction in (0, 1] (that share of each earlier stage's rows, sampled with `seed` and drawn
            afresh at every stage). `None` takes the preset's value, or `"full"` without a preset.
        lora_ranks (`list[int]`, *optional*):
            LoRA rank of each stage's adapter, e.g. `[256, 128, 64, 32, 16]`, or a single rank for every stage. `None`
            takes the preset's ranks, or the `r` of the `peft_config` at every stage without a preset.
        lora_alpha_ratio (`float` or `None`, *optional*):
            Each stage's `lora_alpha` is this ratio times its rank. `None`: 2.0 with a `plrs_preset` (alpha = 2r, as
            in the paper), else the ratio `lora_alpha / r` of the `peft_config` (so `LoraConfig(r=8, lora_alpha=32)`
            trains every stage with alpha = 4r, and a one-stage curriculum is exactly `SFTTrainer`).
        adapter_transition (`str`, *optional*, defaults to `"auto"`):
            What happens to a finished stage's adapter. `"merge"`: it is merged into the base weights and removed
            before the next stage's adapter is added; exact only into fp32 weights (a bf16 merge rounds most of a
            small update away, and a warning then says how much). `"stack"`: it is kept, frozen and still active,
            beside the new one, fused with the earlier finished stages into one frozen adapter `"frozen_stages"` (a
            layer runs two LoRA branches, whatever the number of stages); exact on any base, the only choice on a
            quantized (4-bit or 8-bit) one, at the cost of the finished ranks' FLOPs in every later step.
            `"fp32_merge"`: at the first transition the
            LoRA-targeted 16-bit base weights are upcast to fp32 (2 more bytes per weight; back to their dtype after
            training), then every finished adapter is merged exactly; needs autocast (`bf16`/`fp16`) and no
            DeepSpeed/FSDP. `"auto"`: `"merge"` into fp32 weights, `"fp32_merge"` on 16-bit weights under autocast
            when their fp32 copy takes at most 25% of the free device memory, `"stack"` otherwise (a quantized base,
            16-bit weights without autocast, under DeepSpeed/FSDP or whose fp32 copy would not fit, DeepSpeed with
            bf16/fp16, which casts fp32 weights to 16 bits; FSDP2 keeps them fp32, so they merge).
        plrs_preset (`str`, *optional*):
            One of the paper's six baselines, filling `curriculum_stages`, `replay` and `lora_ranks`: `"direct"`
            (B1), `"seq_no_replay"` (B2), `"seq_no_replay_shrink"` (B3), `"seq_full_replay"` (B4), `"replay_shrink"`
            (B5) and `"replay_shrink_no_final"` (B6). A field that you set explicitly wins over the preset's value.

    New parameters for evaluation per level (see [`~trl_plrs.stage_evaluation.StageEvaluationCallback`]):
        stage_eval_per_level (`bool` or `None`, *optional*):
            Whether to evaluate each level of the `eval_dataset` separately, at every evaluation and after every stage,
            and keep the forgetting matrix in `output_dir`. During stage k the trainer's `eval_dataset` (so
            `eval_loss`, model selection and early stopping) is restricted to the levels of stages 1..k. `None`: on
            when the `eval_dataset` has the `curriculum_column`. `True`: required (an error if the column is missing).
        stage_eval_generate (`bool`, *optional*, defaults to `False`):
            Whether to also generate answers after every stage and report the exact match per level (greedy, graded
            as in [`~trl_plrs.math.evaluation.evaluate_math`]). The `eval_dataset` needs `problem` and `answer` (or
            `solution`) columns.
        stage_eval_max_problems_per_level (`int`, *optional*, defaults to `100`):
            Problems generated per level for the exact match (the first ones of each level, the same at every stage).
        stage_eval_max_new_tokens (`int`, *optional*, defaults to `512`):
            Generation budget per problem for the exact match (the paper's value).
        stage_eval_before_training (`bool`, *optional*, defaults to `False`):
            Whether to evaluate every level before the first stage too: the row that forward transfer needs.
        early_stopping_patience (`int` or `None`, *optional*):
            Stop a stage when the validation loss of the levels seen so far has not improved for this many
            evaluations (the paper uses 2 with `eval_strategy="epoch"`); the next stage starts with a fresh patience.
            With `load_best_model_at_end=True` each stage then continues from its best checkpoint. Needs an
            `eval_strategy` other than `"no"` and an `eval_dataset` with the `curriculum_column`;
            `metric_for_best_model` defaults to `"loss"`.
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
    curriculum_difficulty: str | None = field(
        default=None,
        metadata={
            "help": "Compute each row's level instead of reading `curriculum_column`: 'base_loss' (the base model's "
            "mean loss on the completion tokens) or 'length' (number of completion tokens), cut into "
            "`curriculum_num_levels` equal-size levels, level 1 the easiest. In Python, also a callable row -> float."
        },
    )
    curriculum_num_levels: int = field(
        default=5,
        metadata={"help": "Number of equal-size difficulty levels with `curriculum_difficulty`."},
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
        default=None,
        metadata={
            "help": "lora_alpha = ratio x rank at every stage. Default: 2.0 with a preset (the paper's alpha = 2r), "
            "else the peft_config's lora_alpha / r (with `--use_peft`: `--lora_alpha` / `--lora_r`)."
        },
    )
    adapter_transition: str = field(
        default="auto",
        metadata={
            "help": "What happens to a finished stage's adapter: merged into the base weights ('merge', exact into "
            "fp32 weights only), merged after upcasting the targeted 16-bit weights to fp32 ('fp32_merge'), kept "
            "frozen and active, fused with the earlier ones ('stack', exact on any base, required on a quantized one), "
            "or 'auto': merge into fp32 weights, fp32_merge on 16-bit weights under autocast if their fp32 copy fits "
            "a quarter of the free device memory, stack otherwise.",
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

    stage_eval_per_level: bool | None = field(
        default=None,
        metadata={
            "help": "Evaluate each level of the eval_dataset separately and keep the forgetting matrix; during stage k "
            "the eval set is restricted to the levels seen so far. Default: on when the eval_dataset has the "
            "curriculum column."
        },
    )
    stage_eval_generate: bool = field(
        default=False,
        metadata={"help": "Also generate answers after every stage and report the exact match per level."},
    )
    stage_eval_max_problems_per_level: int = field(
        default=100,
        metadata={"help": "Problems generated per level for the exact match after every stage."},
    )
    stage_eval_max_new_tokens: int = field(
        default=512,
        metadata={"help": "Generation budget per problem for the exact match after every stage."},
    )
    stage_eval_before_training: bool = field(
        default=False,
        metadata={"help": "Evaluate every level before the first stage too (needed for forward transfer)."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop a stage after this many evaluations without improvement of the validation loss of the "
            "levels seen so far; with load_best_model_at_end, each stage continues from its best checkpoint."
        },
    )

    def to_dict(self):
        # A callable `curriculum_difficulty` is written (JSON, trackers' hyperparameters) as its qualified name.
        values = super().to_dict()
        if callable(self.curriculum_difficulty):
            values["curriculum_difficulty"] = method_name(self.curriculum_difficulty)
        return values

    def __getstate__(self):
        # `training_args.bin` is a pickle, which a lambda cannot be part of: it keeps the callable's name.
        state = self.__dict__.copy()
        if callable(state.get("curriculum_difficulty")):
            state["curriculum_difficulty"] = method_name(state["curriculum_difficulty"])
        return state

    def __post_init__(self):
        bf16_chosen = self._choose_precision()
        move_to_activation_checkpointing(self)
        # Pinned memory only serves copies to an accelerator; without one torch warns at every stage's dataloader.
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False
        super().__post_init__()
        if bf16_chosen is not None:
            logger.info(
                "`bf16` unset: training in bf16 mixed precision (this GPU supports it)."
                if bf16_chosen
                else "`bf16` unset and no GPU with bf16 here: training in fp32. Set `bf16=True` (with `use_cpu=True` "
                "on a CPU) to use bf16 autocast anyway."
            )
        self._check_plan()
        self._check_difficulty()
        self._check_stage_evaluation()
        self._check_early_stopping()

    def _choose_precision(self) -> bool | None:
        """TRL turns bf16 on when it is unset, which fails on a machine without a bf16 GPU: there, train in fp32."""
        if self.bf16 is None and not self.fp16:
            self.bf16 = is_torch_bf16_gpu_available()
            return self.bf16
        return None

    def _check_plan(self) -> None:
        """`plrs_preset`, `adapter_transition`, `lora_alpha_ratio`, and the stages, ranks and replay (normalized)."""
        if self.plrs_preset is not None and self.plrs_preset not in PRESETS:
            raise ValueError(
                f"`plrs_preset` must be one of {list(PRESETS)}, but the value passed is {self.plrs_preset!r}. "
                "Pick one of those baselines, or leave it unset and set `curriculum_stages`, `replay` and `lora_ranks`."
            )
        if self.adapter_transition not in ADAPTER_TRANSITIONS:
            raise ValueError(
                f"`adapter_transition` must be one of {list(ADAPTER_TRANSITIONS)}, but the value passed is "
                f"{self.adapter_transition!r}. Use 'auto' (the default) to merge into fp32 weights and stack otherwise."
            )
        ratio = self.lora_alpha_ratio
        if ratio is not None:
            try:
                ratio = float(ratio)  # a YAML or a command line may give "2"
            except (TypeError, ValueError):
                ratio = None
            if isinstance(self.lora_alpha_ratio, bool) or ratio is None or not ratio > 0 or ratio == float("inf"):
                raise ValueError(
                    f"`lora_alpha_ratio` must be a positive number, but the value passed is {self.lora_alpha_ratio!r}. "
                    "Use e.g. 2.0 (alpha = 2r, as in the paper), or None for the preset's ratio or the peft_config's."
                )
            self.lora_alpha_ratio = ratio
        self.curriculum_stages = normalize_curriculum_stages(self.curriculum_stages)
        self.lora_ranks = normalize_lora_ranks(self.lora_ranks)
        self.replay = parse_replay(self.replay)

    def _check_difficulty(self) -> None:
        """`curriculum_difficulty` and `curriculum_num_levels`."""
        difficulty = self.curriculum_difficulty
        if difficulty is not None and not callable(difficulty) and difficulty not in DIFFICULTY_METHODS:
            raise ValueError(
                f"`curriculum_difficulty` must be one of {list(DIFFICULTY_METHODS)}, a callable row -> float, or None, "
                f"but the value passed is {difficulty!r}. Use 'base_loss' (the base model's loss on the completion), "
                "'length' (completion tokens), or None to read the levels from `curriculum_column`."
            )
        levels = self.curriculum_num_levels
        if isinstance(levels, str) and levels.strip().isdigit():
            levels = self.curriculum_num_levels = int(levels)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(
                f"`curriculum_num_levels` must be a positive integer, but the value passed is {levels!r}. Use e.g. 5 "
                "(as MATH's levels)."
            )

    def _check_stage_evaluation(self) -> None:
        """The `stage_eval_*` fields."""
        for name in ("stage_eval_max_problems_per_level", "stage_eval_max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer, but the value passed is {value!r}. Use e.g. "
                    f"{self.__dataclass_fields__[name].default} (the default)."
                )
        if self.stage_eval_per_level is False:
            asked = [
                name
                for name in ("stage_eval_generate", "stage_eval_before_training", "early_stopping_patience")
                if getattr(self, name) not in (None, False)
            ]
            if asked:
                raise ValueError(
                    f"`stage_eval_per_level=False` turns off the evaluation per level, which {asked} need. Leave "
                    "`stage_eval_per_level` unset (or True), or unset those fields."
                )

    def _check_early_stopping(self) -> None:
        """`early_stopping_patience` and what it needs (evaluations; a metric; ideally the best checkpoint)."""
        patience = self.early_stopping_patience
        if patience is None:
            return
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"`early_stopping_patience` must be a positive integer or None, but the value passed is "
                f"{patience!r}. Use e.g. 2 (the paper's value), or None to train every stage to the end."
            )
        if self.eval_strategy == "no":
            raise ValueError(
                f"`early_stopping_patience={patience}` needs evaluations during each stage, but `eval_strategy` is "
                "'no'. Set `eval_strategy='epoch'` (as in the paper) or 'steps', and the same `save_strategy` with "
                "`load_best_model_at_end=True` to continue each stage from its best checkpoint."
            )
        if self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
            self.greater_is_better = False
        if not self.load_best_model_at_end:
            logger.warning(
                f"`early_stopping_patience={patience}` without `load_best_model_at_end=True`: each stage stops "
                "early but keeps its last weights, not its best. Set `load_best_model_at_end=True` (with "
                "`save_strategy` equal to `eval_strategy`) to continue from the best checkpoint, as the paper did."
            )
