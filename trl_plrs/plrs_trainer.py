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
[`CurriculumSFTTrainer`]: the loop of a curriculum. Construction checks the arguments, plans the stages, builds
`SFTTrainer` with the first stage's adapter and prepares the rest; `train()` runs the stages, each through the
Trainer's own training loop, between [`begin_stage`] and [`end_stage`]. Where things live: the adapters' transitions
in `transitions.py`, a stage's rows in `stage_data.py`, resume state in `resume.py`, computed levels in
`difficulty.py`, per-level evaluation in `stage_evaluation.py`, bars and log lines in `progress.py`, the model card in
`model_card.py`, and every private upstream name in `trainer_internals.py` (see `docs/architecture.md`).
"""

import contextlib
import dataclasses
import gc
import os
import shutil
import time
from collections.abc import Callable

import torch
from accelerate.logging import get_logger
from datasets import Dataset
from peft import LoraConfig
from peft.utils.error import NoMatchingPeftModuleError
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput
from trl import SFTTrainer

from .adapters import ADAPTER_CONFIG_NAME, DEFAULT_ADAPTER, lora_layers
from .callbacks import CurriculumCallbackHandler, PLRSCallback
from .checkpointing import remove_staging_leftovers
from .curriculum import Stage, build_stages, resolve_replay
from .difficulty import compute_levels, score_rows
from .fingerprint import data_fingerprint, model_fingerprint, training_fingerprint
from .fsdp import (
    ReplicatedAdapterGradients,
    check_fsdp_support,
    keep_adapters_replicated,
    reshard,
)
from .model_card import (
    PAPER_BIBTEX,
    PAPER_TITLE,
    curriculum_card_section,
    insert_card_section,
    model_name,
    name_local_models,
)
from .plrs_config import PLRSConfig
from .progress import CurriculumProgressCallback
from .quantization import is_quantized, keep_4bit_weights_trainable_on_cpu
from .resume import (
    CurriculumState,
    StageSummary,
    checkpoint_to_resume,
    curriculum_fingerprint,
    curriculum_train_metrics,
    read_checkpoint_state,
    set_aside_other_runs_outputs,
    write_checkpoint_state,
)
from .stage_data import (
    check_every_stage_trains,
    pack_stage_rows,
    prepare_for_computed_levels,
    prepared_row_levels,
    select_leveled_rows,
    stage_rows,
    warn_unused_levels,
)
from .stage_evaluation import (
    StageEarlyStoppingCallback,
    StageEvaluationCallback,
    find_stage_early_stopping,
    stage_evaluation_levels,
)
from .trainer_internals import (
    TrainerInternalsMixin,
    check_trainer_internals,
    early_stopping_triggered,
    model_name_or_path,
    quiet_peft_gradient_checkpointing_warning,
    reset_early_stopping,
    sft_autocast_adapter_dtype,
)
from .transitions import (
    CARRY,
    StageAdapters,
    check_first_stage_adapter,
    check_lora_targets,
    check_peft_config,
    check_requested_transition,
    export_combined_adapter,
    resolve_adapter_transition,
    stage_dir,
    stage_lora_config,
    unmatched_targets_error,
)


logger = get_logger(__name__)


class CurriculumSFTTrainer(TrainerInternalsMixin, SFTTrainer):
    """
        [`~trl.SFTTrainer`] that trains a curriculum, level by level, with a fresh and (optionally) smaller LoRA adapter at
        every stage: Sequential Fine-Tuning with Progressive LoRA Rank Shrinking (PLRS).

        One call to [`~CurriculumSFTTrainer.train`] runs every stage. Stage k trains on the rows of its levels plus the
        configured replay of earlier stages, with a new LoRA adapter of rank `lora_ranks[k]`; what earlier stages learned
        is kept, merged into the base weights or as one frozen adapter (see [`PLRSConfig`]). The training set is tokenized
        once; each stage selects its rows. [`PLRSCallback`], which this trainer installs first among its callbacks, tells
        it when a stage begins and ends; the trainer carries out the transition ([`begin_stage`], [`end_stage`]), with
        [`~trl_plrs.transitions.StageAdapters`] for the adapters.

        Callbacks and experiment trackers see the curriculum as one training run (`on_train_begin` and `on_train_end`
        once, `global_step` and `epoch` growing across stages); subclass [`CurriculumCallback`] to also receive
        `on_stage_begin` / `on_stage_end`.

        At the end, `output_dir` holds one standard PEFT LoRA adapter, the exact concatenation of the stage adapters, that
        loads on the original base model with `PeftModel.from_pretrained`; `output_dir/stage-{k}` holds each stage's own
        adapter.

        Example:

        ```python
        >>> from peft import LoraConfig
    from peft.utils.error import NoMatchingPeftModuleError
        >>> from trl_plrs import CurriculumSFTTrainer, PLRSConfig

        >>> args = PLRSConfig(output_dir="out", plrs_preset="replay_shrink")
        >>> trainer = CurriculumSFTTrainer(
        ...     model="meta-llama/Llama-3.2-1B-Instruct",
        ...     args=args,
        ...     train_dataset=dataset,
        ...     peft_config=LoraConfig(target_modules="all-linear"),
        ... )
        >>> trainer.train()
        ```

        Args:
            model (`str` or [`~transformers.PreTrainedModel`]):
                Model to train, or its hub id / local path. Not a [`~peft.PeftModel`]: the trainer manages the adapters.
            args ([`PLRSConfig`], *optional*):
                Configuration. Defaults to `PLRSConfig(f"{model_name}-PLRS")`.
            train_dataset ([`~datasets.Dataset`]):
                Training data in any format [`~trl.SFTTrainer`] accepts, with a column `args.curriculum_column` giving each
                row's level. A map-style dataset is required, since each stage selects rows.
            peft_config ([`~peft.LoraConfig`]):
                LoRA settings shared by every stage (target modules, dropout, ...); the rank and alpha of each stage come
                from the curriculum.
            data_collator, eval_dataset, processing_class, compute_loss_func, compute_metrics, callbacks:
                As in [`~trl.SFTTrainer`], in the same positional order. An `eval_dataset` with the `curriculum_column`
                turns on the evaluation per level (see [`PLRSConfig`]).
            optimizer_cls_and_kwargs, preprocess_logits_for_metrics, quantization_config, formatting_func:
                As in [`~trl.SFTTrainer`].
            optimizers:
                Must stay `(None, None)`: each stage builds its own optimizer and scheduler over its new adapter; pass
                `optimizer_cls_and_kwargs` or set `optim` instead.
    """

    _tag_names = ["trl", "sft", "curriculum", "plrs"]
    _name = "Curriculum SFT (PLRS)"
    # No `id`: TRL's model card links `id` as a Hugging Face papers id, and the paper is on OpenReview only; the card
    # links it in its curriculum section (`create_model_card`).
    _paper = {
        "title": PAPER_TITLE,
        "citation": PAPER_BIBTEX,
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: PLRSConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config=None,
        peft_config: LoraConfig | None = None,
        formatting_func: Callable | None = None,
    ):
        check_trainer_internals()
        args = self._check_arguments(model, args, optimizers, quantization_config, peft_config)
        train_dataset, eval_dataset = self._plan_stages(train_dataset, eval_dataset, args, peft_config)
        with quiet_peft_gradient_checkpointing_warning(), targets_checked(model, peft_config, args):
            super().__init__(
                model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_loss_func=compute_loss_func,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                quantization_config=quantization_config,
                peft_config=stage_lora_config(peft_config, self.stages[0])
                if self.training_kind == "lora"
                else peft_config,
                formatting_func=formatting_func,
            )
        self._prepare_stages(rows_passed=len(train_dataset))
        self._install_callbacks()

    # Construction ---------------------------------------------------------------------------------------------------

    def _check_arguments(self, model, args, optimizers, quantization_config, peft_config) -> PLRSConfig:
        """Refuse, before any model is loaded, what a curriculum cannot train; returns the configuration."""
        if args is None:
            args = PLRSConfig(f"{model_name_or_path(model).split('/')[-1]}-PLRS")
        elif isinstance(args, TrainingArguments) and not isinstance(args, PLRSConfig):
            # As `SFTTrainer` converts `TrainingArguments` to `SFTConfig`: every value kept (`to_dict` would hide the
            # `*_token` fields, `SFTConfig`'s `eos_token` and `pad_token` too), the curriculum's fields at their defaults.
            args = PLRSConfig(
                **{field.name: getattr(args, field.name) for field in dataclasses.fields(args) if field.init}
            )
        elif not isinstance(args, PLRSConfig):
            raise ValueError(
                f"`args` must be a `PLRSConfig`, but the value passed is a `{type(args).__name__}`. Build the "
                "configuration with `trl_plrs.PLRSConfig(...)`, which accepts every `SFTConfig` argument."
            )
        self.training_kind = check_peft_config(model, peft_config, args)
        if tuple(optimizers) != (None, None):
            raise ValueError(
                "`optimizers` cannot be passed to `CurriculumSFTTrainer`: every stage trains a new adapter, so it "
                "builds a new optimizer and scheduler. Pass `optimizer_cls_and_kwargs=(OptimizerClass, kwargs)` or "
                "set `optim`/`lr_scheduler_type` in the `PLRSConfig` instead."
            )
        self.is_quantized = is_quantized(model, args.model_init_kwargs, quantization_config)
        check_requested_transition(args.adapter_transition, self.is_quantized)
        return args

    def _plan_stages(self, train_dataset, eval_dataset, args: PLRSConfig, peft_config: LoraConfig):
        """The stages, from the levels of the rows (or the computed levels to come); returns the datasets to prepare."""
        if args.curriculum_difficulty is None:
            train_dataset, row_levels = select_leveled_rows(train_dataset, args)
        else:
            # Levels 1..K are computed after dataset preparation, from the tokenized rows (`_assign_difficulty_levels`).
            train_dataset, eval_dataset = prepare_for_computed_levels(train_dataset, eval_dataset, args)
            row_levels = list(range(1, args.curriculum_num_levels + 1))
        self.stages = build_stages(
            available_levels=row_levels,
            curriculum_stages=args.curriculum_stages,
            lora_ranks=args.lora_ranks,
            lora_alpha_ratio=args.lora_alpha_ratio,
            default_rank=peft_config.r if self.training_kind == "lora" else None,
            default_alpha=peft_config.lora_alpha if self.training_kind == "lora" else None,
            preset=args.plrs_preset,
        )
        warn_unused_levels(row_levels, self.stages, args)
        self.replay = resolve_replay(args.replay, args.plrs_preset)
        self.stage_peft_config = peft_config
        self.curriculum_state = CurriculumState()
        self.stage_summaries: list[StageSummary] = []
        self._run_fingerprint = None
        self.replicated_gradients = ReplicatedAdapterGradients()  # under FSDP2 (`trl_plrs.fsdp`)
        return train_dataset, eval_dataset

    def _prepare_stages(self, rows_passed: int) -> None:
        """After `SFTTrainer.__init__`: the levels of the prepared rows, the stage plan's checks, the transition."""
        args = self.args
        if self.training_kind == "lora":
            check_first_stage_adapter(self.model.peft_config[DEFAULT_ADAPTER])
        check_fsdp_support(self.accelerator, self.model, self.is_quantized)
        if self.is_quantized:
            # Before any no-grad forward (the difficulty scoring below, the evaluations) can repack the 4-bit weights.
            keep_4bit_weights_trainable_on_cpu(self.model)
        # Tokenized once, here; every stage selects rows of it. Preparation may drop rows (e.g. a completion that
        # truncation removed entirely), so the levels are read again from the prepared rows.
        self.curriculum_dataset = self.train_dataset
        self.difficulty = None
        if args.curriculum_difficulty is not None:
            self._assign_difficulty_levels()
        self.row_levels = prepared_row_levels(self.curriculum_dataset, rows_passed, args)
        check_every_stage_trains(self.stages, self.row_levels, self.replay, args)
        self.adapter_transition, self.stage_adapters = CARRY, None
        if self.training_kind == "lora":
            check_lora_targets(list(lora_layers(self.model)), self.stage_peft_config)
            self.adapter_transition = resolve_adapter_transition(
                self.model, args, self.is_quantized, self.accelerator.device, self.engine
            )
            keep_adapters_replicated(self.model, self.accelerator)
            self.stage_adapters = StageAdapters(
                self.model,
                self.adapter_transition,
                self.stage_peft_config,
                self.is_quantized,
                autocast_adapter_dtype=sft_autocast_adapter_dtype(args, self.is_quantized),
            )

    def _install_callbacks(self) -> None:
        """The curriculum's callback handler, `PLRSCallback` first, its progress bars, and the per-level evaluation."""
        # The stages of one curriculum are one run for every callback (one tracker run, one `on_train_end`).
        handler = self.callback_handler
        self.callback_handler = CurriculumCallbackHandler(
            handler.callbacks, handler.model, handler.processing_class, handler.optimizer, handler.lr_scheduler
        )
        self.plrs_callback = PLRSCallback(self)
        # First, so that other callbacks' stage events see the transition done.
        self.callback_handler.callbacks.insert(0, self.plrs_callback)
        # Bars and log lines per stage (the Trainer installs a `ProgressCallback` unless `disable_tqdm`).
        self.progress_callback = None
        if self.pop_callback(ProgressCallback) is not None:
            self.progress_callback = CurriculumProgressCallback(self)
            self.add_callback(self.progress_callback)
        # Per-level evaluation, forgetting matrix and per-stage early stopping, when the eval data has levels.
        self.stage_evaluation = None
        eval_levels = stage_evaluation_levels(self.args, self.eval_dataset, self.stages)
        if eval_levels is not None:
            self.stage_evaluation = StageEvaluationCallback(self, self.eval_dataset, eval_levels)
            self.callback_handler.callbacks.insert(1, self.stage_evaluation)  # its `on_evaluate` right after ours
            if self.args.early_stopping_patience is not None:
                self.add_callback(
                    StageEarlyStoppingCallback(early_stopping_patience=self.args.early_stopping_patience)
                )

    def _assign_difficulty_levels(self) -> None:
        """
        Give every prepared training row its computed level (`args.curriculum_difficulty`, see
        `difficulty.compute_levels`, which writes `output_dir/difficulty.csv` or reads back the levels it would
        compute), and bin the `eval_dataset` with the same thresholds.
        """
        args = self.args
        computed = compute_levels(
            self.curriculum_dataset,
            self.eval_dataset,
            args.curriculum_difficulty,
            args.curriculum_num_levels,
            args.output_dir,
            self._base_model_fingerprint(),
            score=self.score_difficulty,
            accelerator=self.accelerator,
            should_save=args.should_save,
        )
        self.difficulty = computed.record
        column = args.curriculum_column
        self.curriculum_dataset = self.train_dataset = self.curriculum_dataset.add_column(
            column, computed.train_levels
        )
        if computed.eval_levels is not None:
            self.eval_dataset = self.eval_dataset.add_column(column, computed.eval_levels)

    def score_difficulty(self, dataset: Dataset, split: str) -> list[float]:
        """
        The `curriculum_difficulty` score of every row of a prepared (tokenized) dataset. `"base_loss"` is split
        across processes, each scoring its share with the base model (the adapter disabled), and gathered in order.
        """
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        return score_rows(
            dataset,
            self.args.curriculum_difficulty,
            self.model,
            self.accelerator,
            self.is_quantized,
            batch_size=self.args.per_device_eval_batch_size,
            pad_token_id=getattr(tokenizer, "pad_token_id", None) or 0,
            show_progress=self.is_world_process_zero() and not self.args.disable_tqdm,
            description=f"Scoring the {split} rows' difficulty (base_loss)",
            main_process_only=self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.cpu_ram_efficient_loading,
        )

    def _base_model_fingerprint(self) -> dict[str, str]:
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model_fingerprint(model_name_or_path(model), model.config.to_dict())

    # The rows of a stage (overridable) -------------------------------------------------------------------------------

    def build_stage_dataset(self, stage: Stage) -> Dataset:
        """
        The training rows of `stage`: its own levels plus the replay, selected from the tokenized dataset.

        Override this to change how a stage's data is mixed; it must return rows of `self.curriculum_dataset`.
        """
        return self.curriculum_dataset.select(self.stage_rows(stage))

    def pack_stage_rows(self, rows: Dataset) -> Dataset:
        """With `packing=True`, pack a stage's own rows as `SFTTrainer` packs its training set (`stage_data`)."""
        return pack_stage_rows(rows, self.args)

    def stage_rows(self, stage: Stage) -> list[int]:
        """Indices, in `self.curriculum_dataset`, of the rows of `stage`: its levels plus the replay sample."""
        return stage_rows(self.row_levels, self.stages, stage, self.replay, self.args.seed)

    # The loop -------------------------------------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs,
    ) -> TrainOutput:
        """
        Train every stage of the curriculum, in order, then save the combined adapter to `output_dir` and make
        `self.model` the original base with that adapter (see `_install_combined_adapter`).

        Callbacks and trackers see one training run: `on_train_begin` once, `on_train_end` once at the very end.
        `state.global_step` and `epoch` keep growing across stages; every log entry carries `stage`, `lora_rank`,
        `trainable_params` and `stage_epoch`. A stop request from a callback ends the curriculum after its stage.
        Returns the [`~transformers.trainer_utils.TrainOutput`] of the whole curriculum, with the training loss
        averaged over every step of every stage.
        """
        start_time = time.time()
        self.callback_handler.check_stage_callbacks(self.plrs_callback)
        if self.args.should_save:
            for path in remove_staging_leftovers(self.args.output_dir):
                logger.info(f"Removed {path}, left by an interrupted write.")
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        if checkpoint is not None:
            self._restore_curriculum(checkpoint)
            # The Trainer restores the RNG state only when it runs a step of the resumed stage. A checkpoint that
            # closed its stage leaves no step to run, and the next stage's adapter initialisation must then draw from
            # the checkpoint's RNG state, as it did in the original run.
            self.restore_rng_state(checkpoint)
        elif self.curriculum_state.stage != 0:
            raise ValueError(
                "This trainer has already run its curriculum. Create a new `CurriculumSFTTrainer` to train again, or "
                "pass `resume_from_checkpoint` to continue from a checkpoint."
            )
        elif self.args.should_save:  # a fresh start: another run's outputs in `output_dir` are moved aside first
            set_aside_other_runs_outputs(self.args.output_dir, self.curriculum_fingerprint())
        self.accelerator.wait_for_everyone()
        self.state = TrainerState()
        resume_from_checkpoint = checkpoint
        first_stage = self.curriculum_state.stage
        self.callback_handler.begin_curriculum()
        with _long_lived_objects_frozen():
            for stage in self.stages[first_stage:]:
                self.curriculum_state.stage = stage.index
                self._call_stage_event("on_stage_begin", stage)
                output = super().train(
                    resume_from_checkpoint=resume_from_checkpoint,
                    trial=trial,
                    ignore_keys_for_eval=ignore_keys_for_eval,
                )
                stop_requested = self._stop_requested()
                self._call_stage_event("on_stage_end", stage, metrics=output.metrics)
                resume_from_checkpoint = None
                if stop_requested and stage.index < len(self.stages) - 1:
                    logger.warning(
                        f"Training was asked to stop during stage {stage.number} (`control.should_training_stop` at "
                        f"step {self.state.global_step}, before the stage's last step {self.state.max_steps}): the "
                        f"curriculum ends here. `output_dir` gets the combined adapter of stages 1-{stage.number} "
                        f"(stages {stage.number + 1}-{len(self.stages)} were not trained); resume from a checkpoint "
                        "to train them."
                    )
                    break
        self.curriculum_state.stage = len(self.stages)

        self.save_model(self.args.output_dir)
        self._install_combined_adapter()
        metrics = curriculum_train_metrics(self.stage_summaries, first_stage, start_time, self.state.total_flos)
        # One closing summary, as `SFTTrainer`'s log ends: in train mode it carries TRL's per-batch metrics of the last
        # steps (token accuracy, entropy, tokens seen), as `SFTTrainer.log` adds them.
        self.model.train()
        logged = dict(metrics)  # a copy: `PrinterCallback`/`ProgressCallback` pop `total_flos` from what they print
        self.log(logged)
        metrics.update({key: logged[key] for key in ("epoch",) if key in logged})
        # Only now do trackers end their run: after the last stage, the final save and the final metrics.
        self.control = self.callback_handler.end_curriculum(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def begin_stage(self, stage: Stage) -> None:
        """
        Make `stage` the one that trains (called by [`PLRSCallback.on_stage_begin`]): retire the finished adapter and
        add the stage's fresh one (`transitions.StageAdapters`), make the stage's rows the training set, drop the
        optimizer, scheduler and engine wrapper so that the Trainer builds them anew over the new adapter, and, with
        the evaluation per level, restrict the `eval_dataset` to the levels seen so far.
        """
        adapters = self.stage_adapters  # `None` when the trainable parameters carry on (full fine-tuning, any PEFT)
        if adapters is not None and stage.index > adapters.stage_index:
            finished = self.stages[adapters.stage_index]
            reshard(self.model)  # a merge writes into FSDP2's shards; a no-op without FSDP2
            lost = adapters.advance(finished, stage)
            if lost is not None:
                self._summary_of(finished).merge_rounding_loss = lost
        self.curriculum_state.adapter_stage = stage.index
        self.curriculum_state.frozen_adapters = adapters.frozen if adapters is not None else []
        self.train_dataset = self.pack_stage_rows(self.build_stage_dataset(stage))
        # A new optimizer and scheduler over the new adapter only: the Trainer builds them when these are `None`.
        self.optimizer, self.lr_scheduler = None, None
        # The model is wrapped again (DDP, DeepSpeed) when training re-enters; reusing the old wrapper would leave the
        # new adapter's gradients unsynchronised across ranks.
        self.model_wrapped = self.model
        self.curriculum_state.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        adapter = "" if stage.lora_rank is None else f", LoRA r={stage.lora_rank} alpha={stage.lora_alpha:g}"
        logger.info(
            f"Stage {stage.number}/{len(self.stages)}: levels {list(stage.levels)}, {len(self.train_dataset):,} "
            f"rows{adapter}, {self.curriculum_state.trainable_params:,} trainable parameters"
        )
        if self.stage_evaluation is not None:
            self.eval_dataset = self.stage_evaluation.begin_stage(stage)
            # The Trainer keeps the patience counter across `train()` calls; each stage has its own patience.
            reset_early_stopping(self.callback_handler.callbacks)
        self._stage_start_time = time.perf_counter()  # after the evaluation before training, which is not the stage's

    def after_model_prepared(self) -> None:
        """Once a stage's model is wrapped: under FSDP2, its replicated adapter's gradients averaged across ranks."""
        self.replicated_gradients.install(self.model, self.accelerator, self.stage_adapters is not None)

    def end_stage(self, stage: Stage, metrics: dict[str, float]) -> None:
        """
        Close `stage` (called by [`PLRSCallback.on_stage_end`]): save its adapter to `output_dir/stage-{k}`, record its
        [`~trl_plrs.resume.StageSummary`], and, with the evaluation per level, evaluate every level.
        """
        if self.stage_adapters is not None:  # carried parameters are in the checkpoints and the final save
            self.save_stage_adapter(stage_dir(self.args.output_dir, stage.number))
        steps = self.state.global_step - self.curriculum_state.stage_start_step
        summary = StageSummary(
            stage=stage.number,
            levels=list(stage.levels),
            rows=len(self.train_dataset),
            lora_rank=stage.lora_rank,
            lora_alpha=stage.lora_alpha,
            trainable_params=self.curriculum_state.trainable_params,
            steps=steps,
            samples=round(len(self.train_dataset) * (self.state.epoch or 0.0)),
            train_loss=self._stage_loss(metrics.get("train_loss"), steps),
            train_runtime=self._stage_runtime(),
        )
        self.stage_summaries.append(summary)
        if self.stage_evaluation is not None:
            summary.eval_per_level = self.stage_evaluation.end_stage(stage)
            if stage.index == len(self.stages) - 1:
                self.eval_dataset = self.stage_evaluation.eval_dataset  # after the curriculum, every level again

    def _summary_of(self, stage: Stage) -> StageSummary:
        return next(summary for summary in self.stage_summaries if summary.stage == stage.number)

    def _stop_requested(self) -> bool:
        """
        Whether a callback asked training to stop (a NaN guard, a time budget, an `EarlyStoppingCallback` of the
        user's) before the stage's last step. Reaching `max_steps` sets the same flag, and so does the per-stage early
        stopping of `early_stopping_patience`, which ends only its stage: neither counts.
        """
        if not self.control.should_training_stop or self.state.global_step >= self.state.max_steps:
            return False
        early_stopping = self.stage_early_stopping
        return not (early_stopping is not None and early_stopping_triggered(early_stopping))

    @property
    def stage_early_stopping(self) -> StageEarlyStoppingCallback | None:
        """The early stopping of `early_stopping_patience` (looked up: a resume may have replaced the instance)."""
        return find_stage_early_stopping(self.callback_handler.callbacks)

    @property
    def trained_stages(self) -> list[Stage]:
        """The stages trained to their end so far (all of them after `train()`, unless a stop was requested)."""
        return [self.stages[summary.stage - 1] for summary in self.stage_summaries]

    def _install_combined_adapter(self) -> None:
        """
        After the curriculum, make `self.model` the original base with the combined adapter of every trained stage as
        its only adapter, `"default"`: `trainer.model.save_pretrained`, `merge_and_unload`, `evaluate`, `predict` and
        `push_to_hub` then all see the whole curriculum, and the model's function is unchanged
        (`StageAdapters.install_combined`). Skipped under DeepSpeed and FSDP, whose engines own the weights: there
        `save_model`/`push_to_hub` still write the combined adapter.
        """
        # Every process reads the adapter `save_model` wrote (it waits for the main process); a process that cannot see
        # `output_dir` (another node, no shared filesystem) keeps its stage adapters, with the same function.
        combined_config = os.path.join(self.args.output_dir, ADAPTER_CONFIG_NAME)
        if self.stage_adapters is None or self.engine or not os.path.isfile(combined_config):
            return
        self.stage_adapters.install_combined(self.args.output_dir)
        self.curriculum_state.frozen_adapters = []

    def _call_stage_event(self, event: str, stage: Stage, **kwargs) -> None:
        self.control = getattr(self.callback_handler, event)(
            self.args, self.state, self.control, stage=stage, **kwargs
        )

    # Resume -------------------------------------------------------------------------------------------------------------

    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        return checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir, self.curriculum_fingerprint())

    def curriculum_fingerprint(self) -> dict:
        """
        What a checkpoint must agree on with this trainer for a resume to continue the same run: the model (id and
        config), the LoRA settings, the optimizer, the schedule and batch, the stage plan, the data and the seed (see
        `trl_plrs.resume.curriculum_fingerprint`).
        """
        if self._run_fingerprint is None:
            self._run_fingerprint = {
                "model": self._base_model_fingerprint(),
                "data_sha256": data_fingerprint(self.curriculum_dataset),
                **training_fingerprint(self.args, self.stage_peft_config),
            }
        return curriculum_fingerprint(
            self._run_fingerprint,
            self.stages,
            self.replay,
            self.adapter_transition,
            self.args,
            self.row_levels,
            self.difficulty,
        )

    def _restore_curriculum(self, checkpoint: str) -> None:
        state, summaries = read_checkpoint_state(
            checkpoint, self.curriculum_fingerprint(), lambda index: self.stage_rows(self.stages[index])
        )
        frozen = []
        if self.stage_adapters is not None:  # carried parameters come back with the checkpoint's weights
            self.stage_adapters.restore(self.stages, self.args.output_dir, state.stage)
            frozen = self.stage_adapters.frozen
        # The adapters are the ones just rebuilt from the stage folders, whatever the checkpoint's version named them.
        self.curriculum_state = dataclasses.replace(state, adapter_stage=state.stage, frozen_adapters=frozen)
        self.stage_summaries = summaries
        logger.info(f"Resuming the curriculum at stage {state.stage + 1} from {checkpoint}.")

    def after_checkpoint_load(self, checkpoint: str) -> None:
        """After the Trainer loaded `checkpoint`'s adapters: the trainable one reloaded, the frozen one active again."""
        if self.stage_adapters is not None:
            self.stage_adapters.reload_trainable(checkpoint)
            self.stage_adapters.activate()

    def save_curriculum_state(self, checkpoint_dir: str, loss_this_call: float = 0.0) -> None:
        """
        Write the curriculum's state into `checkpoint_dir`, before the Trainer's own files (`resume`), with the stage's
        training loss summed up to this step (`loss_this_call`: what this `train()` call has summed) and its time.
        """
        state = self.curriculum_state
        write_checkpoint_state(
            checkpoint_dir,
            self.curriculum_fingerprint(),
            dataclasses.replace(
                state, stage_loss_sum=state.stage_loss_sum + loss_this_call, stage_runtime=self._stage_runtime()
            ),
            self.stage_rows(self.stages[self.curriculum_state.stage]),
            self.stage_summaries,
        )

    # Logging and saving ----------------------------------------------------------------------------------------------

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """
        Write TRL's model card to `output_dir/README.md`, with a section on the curriculum: the paper, the transition,
        and a table of the stages trained (levels, rows, rank, alpha, steps, loss), plus the forgetting heatmap.
        """
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as file:
            card = file.read()
        section = curriculum_card_section(
            self.stage_summaries, self.replay, self.adapter_transition, self.args.output_dir
        )
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        card = name_local_models(card, model_name_or_path(base), self.args.hub_model_id or self.args.output_dir)
        with open(path, "w", encoding="utf-8") as file:
            file.write(insert_card_section(card, section))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """
        Log as [`~trl.SFTTrainer`] does, adding `stage`, `lora_rank` and `trainable_params` to `logs` (in place, so
        that `evaluate()` returns them too). `epoch` counts on across stages; `stage_epoch` is the stage's own. A
        stage's own training summary is left out: the log ends with one summary of the whole curriculum.
        """
        if "train_runtime" in logs and self.curriculum_state.stage < len(self.stages):
            # A stage's own training summary, from the end of the Trainer's loop: kept in `stage_summaries`, not in the
            # log, which ends with the curriculum's one summary as `SFTTrainer`'s ends with its own.
            return
        stage = self.stages[min(self.curriculum_state.stage, len(self.stages) - 1)]
        logs["stage"] = stage.number
        if stage.lora_rank is not None:
            logs["lora_rank"] = stage.lora_rank
        logs["trainable_params"] = self.curriculum_state.trainable_params
        stage_epoch = self.state.epoch
        if stage_epoch is None:
            return super().log(logs, start_time)
        logs["stage_epoch"] = stage_epoch
        # `Trainer.log` writes `state.epoch` into the logs; it holds the stage's epoch only for this call.
        self.state.epoch = self.curriculum_state.epochs_before_stage + stage_epoch
        try:
            super().log(logs, start_time)
        finally:
            self.state.epoch = stage_epoch

    def save_stage_adapter(self, output_dir: str) -> None:
        """Save the trainable adapter alone, as a standard PEFT adapter in fp32, to `output_dir` (every rank calls)."""
        self.stage_adapters.save_trainable(output_dir, self.engine, self.args.should_save)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """
        Save the model. Once the curriculum has finished, this writes the combined adapter of every stage (a standard
        LoRA adapter for the original base model) and the tokenizer; during training (checkpoints) it saves as
        [`~trl.SFTTrainer`] does.
        """
        # Once the curriculum has run, every save gives the whole curriculum, `push_to_hub`'s internal one included.
        finished = self.curriculum_state.stage >= len(self.stages) and self.stage_summaries
        if not finished or self.stage_adapters is None:
            super().save_model(output_dir, _internal_call=_internal_call)
            if finished and self.args.should_save:  # the carried model, as `SFTTrainer` saves it, with the card
                self.create_model_card(model_name=model_name(self.args))
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            stage_dirs = [stage_dir(self.args.output_dir, stage.number) for stage in self.trained_stages]
            self.create_model_card(model_name=model_name(self.args))  # TRL writes it to `args.output_dir`
            extra_files = {TRAINING_ARGS_NAME: lambda path: torch.save(self.args, path)}
            if os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
                extra_files["README.md"] = lambda path: shutil.copy(
                    os.path.join(self.args.output_dir, "README.md"), path
                )
            export_combined_adapter(stage_dirs, output_dir, self.processing_class, extra_files)
        self.accelerator.wait_for_everyone()


@contextlib.contextmanager
def targets_checked(model, peft_config: LoraConfig, args: PLRSConfig):
    """PEFT's error for `target_modules` that match nothing, raised as one error that lists the names that would."""
    try:
        yield
    except NoMatchingPeftModuleError:
        raise unmatched_targets_error(model, peft_config, args) from None


@contextlib.contextmanager
def _long_lived_objects_frozen():
    """
    Keep the garbage collector off the objects that exist when the curriculum starts (imported modules, the model,
    the datasets) until the block ends.

    Every stage re-enters the Trainer's training loop, which starts with `accelerator.free_memory()`, a full
    `gc.collect()`. Once torch, transformers and TRL are imported that walks ~500k objects: 0.2-1 s per stage on a
    small CPU, most of the curriculum's overhead over one `SFTTrainer` run (see `benchmarks/results/overhead.md`).
    Frozen objects are skipped, so a stage's collection walks only what earlier stages created, such as the previous
    optimizer and dataloader it is there to free. Left alone when the caller has already frozen objects.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
