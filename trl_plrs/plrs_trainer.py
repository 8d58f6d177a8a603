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

import contextlib
import dataclasses
import gc
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin, TrainerCallback, TrainerState
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput, speed_metrics
from trl import SFTTrainer, pack_dataset

from .adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_ADAPTER,
    FP32_COPY_MAX_SHARE,
    adapter_state_dict,
    choose_adapter_transition,
    concatenate_lora_adapters,
    fp32_copy_bytes,
    fp32_copy_fits,
    free_device_memory,
    lora_layers,
    named_lora_layers,
)
from .callbacks import (
    MERGE_TRANSITIONS,
    CurriculumCallbackHandler,
    CurriculumProgressCallback,
    PLRSCallback,
    stage_dir,
)
from .checkpointing import (
    CURRICULUM_STATE_NAME,
    atomic_path,
    complete_checkpoints,
    install_files,
    read_json,
    remove_staging_leftovers,
    write_json_atomic,
)
from .curriculum import Stage, build_stages, dataset_levels, resolve_replay
from .difficulty import (
    DIFFICULTY_CSV,
    DIFFICULTY_ROW_COLUMN,
    base_loss_scores,
    bin_scores,
    callable_scores,
    completion_lengths,
    levels_from_scores,
    method_name,
    read_difficulty,
    write_difficulty,
)
from .fingerprint import as_json, data_fingerprint, fingerprint_differences, model_fingerprint, training_fingerprint
from .plrs_config import PLRSConfig
from .quantization import is_quantized, keep_4bit_weights_trainable_on_cpu
from .replay import stage_row_indices
from .stage_evaluation import install_stage_evaluation
from .trainer_internals import (
    TrainerInternalsMixin,
    check_trainer_internals,
    early_stopped_at_checkpoint,
    early_stopping_triggered,
    model_name_or_path,
)


logger = get_logger(__name__)

PAPER_TITLE = "Sequential Fine-Tuning with Progressive LoRA Rank Shrinking for Math Word Problems"
PAPER_URL = "https://openreview.net/forum?id=Pf7sa41jkz"
PAPER_BIBTEX = """@inproceedings{plrs2025,
    title     = {{Sequential Fine-Tuning with Progressive LoRA Rank Shrinking for Math Word Problems}},
    booktitle = {AI for Math Workshop at ICML 2025},
    year      = 2025,
    url       = {https://openreview.net/forum?id=Pf7sa41jkz}
}"""

# `init_lora_weights` values that start a new adapter at B = 0 without touching the base weights, so that adding it
# leaves the model's function unchanged.
EXACT_LORA_INITS = (True, "gaussian")
# Name under which the combined adapter is loaded while the stage adapters are replaced by it, at the end.
COMBINED_ADAPTER = "curriculum_combined"


@dataclass
class CurriculumState:
    """
    Where the curriculum stands; everything a resume needs beyond the Trainer's own state.

    Args:
        stage (`int`): Index (from 0) of the stage being trained; folders, logs and summaries number it from 1.
        stage_start_step (`int`): `global_step` at which that stage started.
        adapter_stage (`int`): Index of the stage whose adapter is the trainable `"default"` adapter.
        frozen_adapters (`list[str]`): The frozen, active adapter that carries the finished stages (stack mode:
            `["frozen_stages"]` from stage 2 on), else empty.
        trainable_params (`int`): Trainable parameters of the current stage.
        epochs_before_stage (`float`): Epochs trained by the finished stages; logged `epoch` = this + `stage_epoch`.
    """

    stage: int = 0
    stage_start_step: int = 0
    adapter_stage: int = 0
    frozen_adapters: list[str] = field(default_factory=list)
    trainable_params: int = 0
    epochs_before_stage: float = 0.0


class CurriculumSFTTrainer(TrainerInternalsMixin, SFTTrainer):
    """
    [`~trl.SFTTrainer`] that trains a curriculum, level by level, with a fresh and (optionally) smaller LoRA adapter at
    every stage: Sequential Fine-Tuning with Progressive LoRA Rank Shrinking (PLRS).

    One call to [`~CurriculumSFTTrainer.train`] runs every stage. Stage k trains on the rows of its levels plus the
    configured replay of earlier stages, with a new LoRA adapter of rank `lora_ranks[k]`; what earlier stages learned
    is kept, merged into the base weights or as frozen adapters (see [`PLRSConfig`]). The training set is tokenized
    once; each stage selects its rows. The stage mechanics live in [`PLRSCallback`], which this trainer installs.

    Callbacks and experiment trackers see the curriculum as one training run (`on_train_begin` and `on_train_end`
    once, `global_step` and `epoch` growing across stages); subclass [`CurriculumCallback`] to also receive
    `on_stage_begin` / `on_stage_end`.

    At the end, `output_dir` holds one standard PEFT LoRA adapter, the exact concatenation of the stage adapters, that
    loads on the original base model with `PeftModel.from_pretrained`; `output_dir/stage-{k}` holds each stage's own
    adapter.

    Example:

    ```python
    >>> from peft import LoraConfig
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
        if args is None:
            args = PLRSConfig(f"{model_name_or_path(model).split('/')[-1]}-PLRS")
        elif not isinstance(args, PLRSConfig):
            raise ValueError(
                f"`args` must be a `PLRSConfig`, but the value passed is a `{type(args).__name__}`. Build the "
                "configuration with `trl_plrs.PLRSConfig(...)`, which accepts every `SFTConfig` argument."
            )
        _check_peft_config(model, peft_config)
        if tuple(optimizers) != (None, None):
            raise ValueError(
                "`optimizers` cannot be passed to `CurriculumSFTTrainer`: every stage trains a new adapter, so it "
                "builds a new optimizer and scheduler. Pass `optimizer_cls_and_kwargs=(OptimizerClass, kwargs)` or "
                "set `optim`/`lr_scheduler_type` in the `PLRSConfig` instead."
            )
        self.is_quantized = is_quantized(model, args.model_init_kwargs, quantization_config)
        if self.is_quantized and args.adapter_transition == "merge":
            raise ValueError(
                "`adapter_transition='merge'` cannot be used with a quantized (4-bit or 8-bit) base model: merging "
                "a finished adapter into quantized weights would round it away. Use `adapter_transition='auto'` (the "
                "default) or 'stack', which keep finished adapters frozen and active beside the new one."
            )

        if args.curriculum_difficulty is None:
            train_dataset, row_levels = _select_leveled_rows(train_dataset, args)
        else:
            # Levels 1..K are computed after dataset preparation, from the tokenized rows (`_assign_difficulty_levels`).
            train_dataset, eval_dataset = _prepare_for_computed_levels(train_dataset, eval_dataset, args)
            row_levels = list(range(1, args.curriculum_num_levels + 1))
        self.stages = build_stages(
            available_levels=row_levels,
            curriculum_stages=args.curriculum_stages,
            lora_ranks=args.lora_ranks,
            lora_alpha_ratio=args.lora_alpha_ratio,
            default_rank=peft_config.r,
            default_alpha=peft_config.lora_alpha,
            preset=args.plrs_preset,
        )
        unused_levels = sorted(set(row_levels) - {level for stage in self.stages for level in stage.levels})
        if unused_levels:
            logger.warning(
                f"The training dataset has rows of levels {unused_levels}, which no stage of `curriculum_stages` "
                f"({args.curriculum_stages}) trains on. Add them to a stage to use them."
            )
        self.replay = resolve_replay(args.replay, args.plrs_preset)
        self.stage_peft_config = peft_config
        self.curriculum_state = CurriculumState()
        self.stage_summaries: list[dict[str, Any]] = []
        self._run_fingerprint = None

        first_stage_config = dataclasses.replace(
            peft_config, r=self.stages[0].lora_rank, lora_alpha=self.stages[0].lora_alpha
        )
        with warnings.catch_warnings():
            # PEFT 0.21's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, which transformers 5.24
            # deprecates; the warning is about PEFT's code, not the user's.
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
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
                peft_config=first_stage_config,
                formatting_func=formatting_func,
            )

        _check_first_stage_adapter(self.model.peft_config[DEFAULT_ADAPTER])
        if self.is_quantized:
            # Before any no-grad forward (the difficulty scoring below, the evaluations) can repack the 4-bit weights.
            keep_4bit_weights_trainable_on_cpu(self.model)
        # Tokenized once, here; every stage selects rows of it. Preparation may drop rows (e.g. a completion that
        # truncation removed entirely), so the levels are read again from the prepared rows.
        self.curriculum_dataset = self.train_dataset
        self.difficulty = None
        if args.curriculum_difficulty is not None:
            self._assign_difficulty_levels()
        if args.curriculum_column not in self.curriculum_dataset.column_names:
            raise ValueError(
                f"The prepared training dataset lost the `curriculum_column` {args.curriculum_column!r} (columns: "
                f"{self.curriculum_dataset.column_names}). Keep that column in the dataset you pass; with "
                "`skip_prepare_dataset=True`, keep it beside `input_ids`."
            )
        self.row_levels = dataset_levels(self.curriculum_dataset, args.curriculum_column)
        dropped = len(train_dataset) - len(self.curriculum_dataset)
        if dropped > 0:
            logger.warning(
                f"Dataset preparation dropped {dropped} of {len(train_dataset):,} training rows (rows whose completion "
                f"was truncated away by `max_length={args.max_length}`, which would train on nothing). Raise "
                "`max_length` to keep them."
            )
        self._check_every_stage_trains()
        # The dtype each targeted base weight came in: `fp32_merge` upcasts them, and the end restores it.
        self.base_weight_dtypes = {
            name: layer.get_base_layer().weight.dtype for name, layer in named_lora_layers(self.model)
        }
        self.adapter_transition = self._resolve_adapter_transition()
        # As `SFTTrainer` creates the first adapter: under ZeRO-3 a non-quantized model keeps the adapter in its dtype.
        self.autocast_adapter_dtype = not (
            args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3 and not self.is_quantized
        )
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
        self.stage_early_stopping = None
        self.stage_evaluation = install_stage_evaluation(self)

    def _assign_difficulty_levels(self) -> None:
        """
        Score every prepared training row (`args.curriculum_difficulty`), cut the rows into `curriculum_num_levels`
        equal-size levels, write them to `output_dir/difficulty.csv` and into the `curriculum_column`; bin the
        `eval_dataset` with the same thresholds. A `"base_loss"` run that finds the levels it would compute already
        in `output_dir` (same data, model and settings: a resume, or a rerun) reads them instead of scoring again.
        """
        args = self.args
        column, method = args.curriculum_column, method_name(args.curriculum_difficulty)
        dataset = self.curriculum_dataset
        rows = dataset[DIFFICULTY_ROW_COLUMN]
        key = {
            "method": method,
            "num_levels": args.curriculum_num_levels,
            "data_sha256": data_fingerprint(dataset),
            "model": self._base_model_fingerprint(),
        }
        saved = None
        if args.curriculum_difficulty == "base_loss":
            # The main process decides for all (every process then scores, or none does).
            saved = read_difficulty(args.output_dir, key) if self.accelerator.is_main_process else None
            if self.accelerator.num_processes > 1:
                saved = broadcast_object_list([saved])[0]
        if saved is not None:
            scores, levels, thresholds = saved
            logger.info(f"Read the difficulty levels of this data and model from {args.output_dir}.")
        else:
            scores = self.score_difficulty(dataset, "train")
            levels, thresholds = levels_from_scores(scores, args.curriculum_num_levels)
            if args.should_save:
                write_difficulty(args.output_dir, key, rows, scores, levels, thresholds)
        self.difficulty = {"method": method, "num_levels": args.curriculum_num_levels, "thresholds": thresholds}
        self.curriculum_dataset = self.train_dataset = dataset.add_column(column, levels)
        sizes = [levels.count(level) for level in range(1, args.curriculum_num_levels + 1)]
        logger.info(
            f"Difficulty levels by {method}: {sizes} rows in levels 1-{args.curriculum_num_levels} (thresholds "
            f"{[round(t, 4) for t in thresholds]}), written to {os.path.join(args.output_dir, DIFFICULTY_CSV)}."
        )
        if isinstance(self.eval_dataset, Dataset):
            eval_levels = bin_scores(self.score_difficulty(self.eval_dataset, "eval"), thresholds)
            self.eval_dataset = self.eval_dataset.add_column(column, eval_levels)

    def score_difficulty(self, dataset: Dataset, split: str) -> list[float]:
        """
        The `curriculum_difficulty` score of every row of a prepared (tokenized) dataset. `"base_loss"` is split
        across processes, each scoring its share with the base model (the adapter disabled), and gathered in order.
        """
        difficulty = self.args.curriculum_difficulty
        if difficulty == "length":
            return completion_lengths(dataset)
        if callable(difficulty):
            return callable_scores(difficulty, dataset)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        with self.accelerator.split_between_processes(list(range(len(dataset)))) as shard:
            with _scoring_model(self.model, self.accelerator.device, self.is_quantized) as model:
                scores = base_loss_scores(
                    model,
                    dataset.select(shard),
                    batch_size=self.args.per_device_eval_batch_size,
                    pad_token_id=getattr(tokenizer, "pad_token_id", None) or 0,
                    show_progress=self.is_world_process_zero() and not self.args.disable_tqdm,
                    description=f"Scoring the {split} rows' difficulty (base_loss)",
                )
        return gather_object(scores) if self.accelerator.num_processes > 1 else scores

    def _base_model_fingerprint(self) -> dict[str, str]:
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model_fingerprint(model_name_or_path(model), model.config.to_dict())

    def _resolve_adapter_transition(self) -> str:
        """`args.adapter_transition`, with `"auto"` resolved from how the targeted base weights train."""
        args = self.args
        layers = list(lora_layers(self.model))
        _check_lora_targets(layers, self.stage_peft_config)
        base_dtypes = {layer.get_base_layer().weight.dtype for layer in layers}
        sharded_engine = args.deepspeed_plugin is not None or bool(args.fsdp)
        autocast = bool(args.bf16 or args.fp16)
        copy_bytes, free_bytes = fp32_copy_bytes(self.model), free_device_memory(self.accelerator.device)
        copy_fits = fp32_copy_fits(copy_bytes, free_bytes)
        transition = choose_adapter_transition(
            args.adapter_transition, base_dtypes, self.is_quantized, sharded_engine, autocast, copy_fits
        )
        weights = "4-bit/8-bit" if self.is_quantized else "/".join(sorted(str(d).split(".")[-1] for d in base_dtypes))
        if transition == "fp32_merge" and (self.is_quantized or sharded_engine or not autocast):
            raise ValueError(
                f"`adapter_transition='fp32_merge'` upcasts the targeted {weights} base weights to fp32 and needs "
                "training under autocast (`bf16=True` or `fp16=True`) without DeepSpeed or FSDP (which own the "
                "weights' dtype) and an unquantized base. Use `adapter_transition='auto'`, which picks what fits."
            )
        described = {
            "merge": "merged into the base weights",
            "fp32_merge": "merged into the targeted base weights after upcasting them to fp32 (2 more bytes per "
            "targeted weight; a 16-bit merge would round most of each stage away)",
            "stack": "kept frozen and active beside the new one, fused into one frozen adapter",
        }
        if args.adapter_transition == "auto":
            memory = ""
            if copy_bytes and autocast and not (self.is_quantized or sharded_engine):
                free = "unknown" if free_bytes is None else f"{free_bytes / 2**30:.2f} GiB"
                memory = (
                    f"; an fp32 copy of them takes {copy_bytes / 2**30:.2f} GiB more, "
                    f"{'within' if copy_fits else 'over'} {FP32_COPY_MAX_SHARE:.0%} of the {free} free on "
                    f"{self.accelerator.device}"
                )
            logger.info(
                f"`adapter_transition='auto'`: the targeted base weights are {weights}"
                f"{', trained by ' + ('DeepSpeed' if args.deepspeed_plugin else 'FSDP') if sharded_engine else ''}"
                f"{' under autocast' if autocast else ''}{memory}, so finished adapters are {described[transition]} "
                f"('{transition}')."
            )
        elif transition == "merge" and (
            not base_dtypes <= {torch.float32, torch.float64} or (sharded_engine and autocast)
        ):
            logger.warning(
                f"`adapter_transition='merge'` with {weights} base weights"
                f"{' cast to 16 bits by the engine' if sharded_engine and autocast else ''}: merging a stage's update "
                "into 16-bit weights rounds most of it away (each merge logs how much). Use "
                "`adapter_transition='auto'` (the default), 'fp32_merge' or 'stack', or load the base in float32."
            )
        return transition

    def _check_every_stage_trains(self) -> None:
        """Fail before training when a stage would run no optimizer step."""
        args = self.args
        if args.max_steps <= 0 and args.num_train_epochs <= 0:
            raise ValueError(
                f"`num_train_epochs` is {args.num_train_epochs} and `max_steps` is {args.max_steps}, so no stage would "
                "train. Set `num_train_epochs` (per stage) to a positive number, or `max_steps` (per stage) to a "
                "positive integer."
            )
        rows_per_batch = args.per_device_train_batch_size * args.world_size
        for stage in self.stages:
            if not any(level in stage.levels for level in self.row_levels):
                raise ValueError(
                    f"Stage {stage.number} (levels {list(stage.levels)}) has no training rows left after dataset "
                    "preparation (rows whose completion is empty after truncation are dropped). Raise `max_length`, "
                    "or change `curriculum_stages` so that every stage has rows."
                )
            rows = len(stage_row_indices(self.row_levels, self.stages, stage.index, self.replay, args.seed))
            if args.dataloader_drop_last and rows < rows_per_batch:
                raise ValueError(
                    f"Stage {stage.number} (levels {list(stage.levels)}) has {rows} rows, fewer than one batch "
                    f"({rows_per_batch} = `per_device_train_batch_size` x processes), and `dataloader_drop_last=True` "
                    "would drop them all, so the stage would run no optimizer step. Set `dataloader_drop_last=False` or "
                    "lower `per_device_train_batch_size`."
                )

    def build_stage_dataset(self, stage: Stage) -> Dataset:
        """
        The training rows of `stage`: its own levels plus the replay, selected from the tokenized dataset.

        Override this to change how a stage's data is mixed; it must return rows of `self.curriculum_dataset`.
        """
        return self.curriculum_dataset.select(self.stage_rows(stage))

    def pack_stage_rows(self, rows: Dataset) -> Dataset:
        """
        With `packing=True`, pack a stage's rows with TRL's packing (`trl.pack_dataset`, `packing_strategy`, up to
        `max_length` tokens per sequence), as `SFTTrainer` packs its whole training set; else return them as they
        are. Each stage packs its own rows, so a packed sequence never holds a row of another stage.
        """
        args = self.args
        if not args.packing:
            return rows
        rows = rows.select_columns(["input_ids", "labels"])
        if args.shuffle_dataset:
            rows = rows.shuffle(seed=args.seed)
        map_kwargs = {"desc": "Packing the stage's rows"}
        if args.dataset_num_proc is not None:
            map_kwargs["num_proc"] = args.dataset_num_proc
        packed = pack_dataset(rows, args.max_length, args.packing_strategy, map_kwargs)
        return packed.shuffle(seed=args.seed) if args.shuffle_dataset else packed

    def stage_rows(self, stage: Stage) -> list[int]:
        """Indices, in `self.curriculum_dataset`, of the rows of `stage`: its levels plus the replay sample."""
        return stage_row_indices(self.row_levels, self.stages, stage.index, self.replay, self.args.seed)

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
        metrics = self._curriculum_metrics(start_time, first_stage)
        self.log(dict(metrics))  # a copy: `PrinterCallback`/`ProgressCallback` pop `total_flos` from what they print
        # Only now do trackers end their run: after the last stage, the final save and the final metrics.
        self.control = self.callback_handler.end_curriculum(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def _stop_requested(self) -> bool:
        """
        Whether a callback asked training to stop (a NaN guard, a time budget, an `EarlyStoppingCallback` of the
        user's) before the stage's last step. Reaching `max_steps` sets the same flag, and so does the per-stage early
        stopping of `early_stopping_patience`, which ends only its stage: neither counts.
        """
        if not self.control.should_training_stop or self.state.global_step >= self.state.max_steps:
            return False
        return not (self.stage_early_stopping is not None and early_stopping_triggered(self.stage_early_stopping))

    @property
    def trained_stages(self) -> list[Stage]:
        """The stages trained to their end so far (all of them after `train()`, unless a stop was requested)."""
        return [self.stages[summary["stage"] - 1] for summary in self.stage_summaries]

    def _install_combined_adapter(self) -> None:
        """
        After the curriculum, make `self.model` the original base with the combined adapter of every trained stage as
        its only adapter, `"default"`: `trainer.model.save_pretrained`, `merge_and_unload`, `evaluate`, `predict` and
        `push_to_hub` then all see the whole curriculum. The model's function is unchanged: in merge mode the merged
        stages are first subtracted from the base weights (in fp32; weights upcast by `fp32_merge` return to their
        dtype), so the base model object you passed ends as it began, up to float rounding. Skipped under DeepSpeed
        and FSDP, whose engines own the weights: there `save_model`/`push_to_hub` still write the combined adapter.
        """
        # Every process reads the adapter `save_model` wrote (it waits for the main process); a process that cannot see
        # `output_dir` (another node, no shared filesystem) keeps its stage adapters, with the same function.
        combined_config = os.path.join(self.args.output_dir, ADAPTER_CONFIG_NAME)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not os.path.isfile(combined_config):
            return
        model = self.model
        model.load_adapter(self.args.output_dir, adapter_name=COMBINED_ADAPTER)
        if self.adapter_transition in MERGE_TRANSITIONS:
            for name, layer in named_lora_layers(model):
                if COMBINED_ADAPTER not in layer.lora_A:
                    continue
                weight = layer.get_base_layer().weight
                with torch.no_grad():
                    merged = layer.get_delta_weight(COMBINED_ADAPTER).float()
                    if DEFAULT_ADAPTER in layer.lora_A:  # the last stage's adapter is live, not merged
                        merged -= layer.get_delta_weight(DEFAULT_ADAPTER).float()
                    restored = weight.data.float() - merged
                    weight.data = restored.to(self.base_weight_dtypes.get(name, weight.dtype))
        model.set_adapter(COMBINED_ADAPTER)  # deleting the active adapter would make PEFT warn that it switched
        for name in [name for name in model.peft_config if name != COMBINED_ADAPTER]:
            model.delete_adapter(name)
        model.load_adapter(self.args.output_dir, adapter_name=DEFAULT_ADAPTER)
        model.set_adapter(DEFAULT_ADAPTER)
        model.delete_adapter(COMBINED_ADAPTER)
        self.curriculum_state.frozen_adapters = []

    def _curriculum_metrics(self, start_time: float, first_stage_index: int) -> dict[str, float]:
        """The train metrics of the whole curriculum, as `SFTTrainer.train` reports them for one training."""
        summaries = self.stage_summaries
        total_steps = sum(summary["steps"] for summary in summaries)
        train_loss = sum(summary["train_loss"] * summary["steps"] for summary in summaries) / max(total_steps, 1)
        # Samples and steps of the stages run by this call (a resumed run does not count the earlier ones).
        this_call = [summary for summary in summaries if summary["stage"] > first_stage_index]
        metrics = speed_metrics(
            "train",
            start_time,
            num_samples=sum(summary.get("samples", 0) for summary in this_call),
            num_steps=sum(summary["steps"] for summary in this_call),
        )
        metrics["total_flos"] = self.state.total_flos
        metrics["train_loss"] = train_loss
        return metrics

    def _call_stage_event(self, event: str, stage: Stage, **kwargs) -> None:
        self.control = getattr(self.callback_handler, event)(
            self.args, self.state, self.control, stage=stage, **kwargs
        )

    def continue_training_state(
        self,
        previous: TrainerState,
        resumed: bool,
        max_steps: int,
        num_update_steps_per_epoch: int,
        num_train_epochs: int,
        epochs_trained: int,
        steps_trained_in_current_epoch: int,
    ) -> tuple[int, int]:
        """
        Make the Trainer's new `TrainerState` of a stage continue the curriculum's, and return the stage's
        `(epochs_trained, steps_trained_in_current_epoch)` for the data skip of a resume.

        The Trainer starts a fresh `TrainerState` at every `train()`; a stage carries on the previous stage's step
        count, log history, FLOs and token count instead, so `global_step` only grows and loggers see one run. A
        resumed stage gets the checkpoint's state, whose `global_step` counts every stage; the data to skip is
        counted within the stage. `state.max_steps` is the stage's last step.
        """
        if not resumed:
            self.state.global_step = previous.global_step
            self.state.log_history = previous.log_history
            self.state.total_flos = previous.total_flos
            self.state.num_input_tokens_seen = previous.num_input_tokens_seen
            if previous.global_step > self.curriculum_state.stage_start_step:
                # `previous` ended the stage before this one: its epochs count towards the continuous `epoch`.
                self.curriculum_state.epochs_before_stage += previous.epoch or 0.0
            self.curriculum_state.stage_start_step = previous.global_step
        else:
            # The checkpoint's `global_step` counts every stage; the data to skip is counted within this stage.
            steps_in_stage = self.state.global_step - self.curriculum_state.stage_start_step
            if steps_in_stage >= max_steps or early_stopped_at_checkpoint(self.state):
                # The checkpoint closed its stage: its last step, or the step at which early stopping ended it. The
                # Trainer's loop would still run a step (its stop flag is set only at a step's end, and the saved
                # early-stopping state is not a stop): no epoch is left to run instead. The stage then ends as it did,
                # loading its best checkpoint with `load_best_model_at_end`.
                epochs_trained, steps_trained_in_current_epoch = num_train_epochs, 0
            else:
                epochs_trained = steps_in_stage // num_update_steps_per_epoch
                steps_trained_in_current_epoch = 0
                if not self.args.ignore_data_skip:
                    steps_in_epoch = steps_in_stage % num_update_steps_per_epoch
                    steps_trained_in_current_epoch = steps_in_epoch * self.args.gradient_accumulation_steps
        self.state.max_steps = self.curriculum_state.stage_start_step + max_steps
        return epochs_trained, steps_trained_in_current_epoch

    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            return self._last_checkpoint_of_this_run()
        if not os.path.isfile(os.path.join(resume_from_checkpoint, CURRICULUM_STATE_NAME)):
            raise ValueError(
                f"`resume_from_checkpoint` is {resume_from_checkpoint!r}, which holds no {CURRICULUM_STATE_NAME}: it "
                "is not a complete checkpoint of a curriculum run (it may have been interrupted while written). Pass "
                "an earlier checkpoint, or `resume_from_checkpoint=True` to pick the last complete one."
            )
        return resume_from_checkpoint

    def _last_checkpoint_of_this_run(self) -> str:
        """
        The newest complete checkpoint in `output_dir` written by this run (the same fingerprint). Checkpoints of
        another run that used the same folder are skipped with a warning, so a resume never continues another run.
        """
        output_dir = self.args.output_dir
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise ValueError(
                f"`resume_from_checkpoint=True` but `output_dir` ({output_dir}) holds no complete checkpoint. Set "
                "`save_strategy`/`save_steps` so that checkpoints are written, or start without "
                "`resume_from_checkpoint`."
            )
        fingerprint = self.curriculum_fingerprint()
        others, differences_of_others = [], []
        for checkpoint in reversed(checkpoints):
            saved = read_json(os.path.join(checkpoint, CURRICULUM_STATE_NAME))["fingerprint"]
            differences = fingerprint_differences(saved, fingerprint)
            if not differences:
                if others:
                    logger.warning(
                        f"Skipped the checkpoints {others} of `output_dir`: another run wrote them (they differ in "
                        f"{sorted({name for name, _, _ in differences_of_others})}). Resuming from {checkpoint}."
                    )
                return checkpoint
            others.append(os.path.basename(checkpoint))
            differences_of_others = differences
        raise ValueError(
            f"`resume_from_checkpoint=True`, but every checkpoint in `output_dir` ({output_dir}: {others}) belongs to "
            f"another run: they differ from this trainer in {[name for name, _, _ in differences_of_others]}. Resume "
            "with that run's model, configuration and data, or start a new run in another `output_dir`."
        )

    def curriculum_fingerprint(self) -> dict[str, Any]:
        """
        What a checkpoint must agree on with this trainer for a resume to continue the same run: the model (id and
        config), the LoRA settings, the optimizer, the schedule and batch, the stage plan, the data and the seed (see
        `trl_plrs.fingerprint`).
        """
        if self._run_fingerprint is None:
            self._run_fingerprint = {
                "model": self._base_model_fingerprint(),
                "data_sha256": data_fingerprint(self.curriculum_dataset),
                **training_fingerprint(self.args, self.stage_peft_config),
            }
        fingerprint = {
            "stages": [dataclasses.asdict(stage) for stage in self.stages],
            "replay": self.replay,
            "adapter_transition": self.adapter_transition,
            "seed": self.args.seed,
            "curriculum_column": self.args.curriculum_column,
            "rows_per_level": {str(level): self.row_levels.count(level) for level in sorted(set(self.row_levels))},
            "difficulty": self.difficulty,
            **self._run_fingerprint,
        }
        return as_json(fingerprint)  # as it reads back from a checkpoint

    def _restore_curriculum(self, checkpoint: str) -> None:
        saved = read_json(os.path.join(checkpoint, CURRICULUM_STATE_NAME))
        differences = fingerprint_differences(saved["fingerprint"], self.curriculum_fingerprint())
        if differences:
            details = "; ".join(f"{name}: checkpoint {old!r}, now {new!r}" for name, old, new in differences[:8])
            raise ValueError(
                f"Cannot resume from {checkpoint}: it belongs to another run, whose fields "
                f"{[name for name, _, _ in differences]} differ from this trainer's ({details}). Resume with the "
                "model, configuration and training data of the run that wrote the checkpoint, or start a new run in "
                "another `output_dir`."
            )
        state = CurriculumState(**saved["curriculum_state"])
        if saved["stage_rows"] != self.stage_rows(self.stages[state.stage]):
            raise ValueError(
                f"Cannot resume from {checkpoint}: the rows of stage {state.stage + 1} (its levels plus the replay sample) "
                "differ from the checkpoint's, so the training data or `stage_rows` changed. Resume with the training "
                "data and code of the run that wrote the checkpoint."
            )
        self.plrs_callback.restore_finished_stages(state.stage)
        # The adapters are the ones just rebuilt from the stage folders, whatever the checkpoint's version named them.
        self.curriculum_state = dataclasses.replace(
            state, adapter_stage=state.stage, frozen_adapters=self.curriculum_state.frozen_adapters
        )
        self.stage_summaries = saved["stage_summaries"]
        logger.info(f"Resuming the curriculum at stage {state.stage + 1} from {checkpoint}.")

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
        section = curriculum_card_section(self)
        marker = "### Framework versions"
        card = card.replace(marker, section + marker, 1) if marker in card else card + "\n" + section
        with open(path, "w", encoding="utf-8") as file:
            file.write(card)

    def reload_trainable_adapter(self, checkpoint: str) -> None:
        """Load the trainable `"default"` adapter's weights from `checkpoint` (stack mode, where it sits at the root)."""
        if self.curriculum_state.frozen_adapters and os.path.isfile(os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)):
            self.model.load_adapter(checkpoint, adapter_name=DEFAULT_ADAPTER, is_trainable=True)

    def save_curriculum_state(self, checkpoint_dir: str) -> None:
        """
        Write the curriculum's state into `checkpoint_dir`, before the Trainer's own files: the Trainer writes
        `trainer_state.json` last, so a checkpoint that has both is whole (see `checkpointing.is_complete_checkpoint`).
        """
        write_json_atomic(
            os.path.join(checkpoint_dir, CURRICULUM_STATE_NAME),
            {
                "fingerprint": self.curriculum_fingerprint(),
                "curriculum_state": dataclasses.asdict(self.curriculum_state),
                # The stage's rows, replay sample included: a resume checks it trains on the very same rows.
                "stage_rows": self.stage_rows(self.stages[self.curriculum_state.stage]),
                "stage_summaries": self.stage_summaries,
            },
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """
        Log as [`~trl.SFTTrainer`] does, adding `stage`, `lora_rank` and `trainable_params` to `logs` (in place, so
        that `evaluate()` returns them too). `epoch` counts on across stages; `stage_epoch` is the stage's own.
        """
        stage = self.stages[min(self.curriculum_state.stage, len(self.stages) - 1)]
        logs.update(
            {
                "stage": stage.number,
                "lora_rank": stage.lora_rank,
                "trainable_params": self.curriculum_state.trainable_params,
            }
        )
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
        """
        Save the trainable adapter alone, as a standard PEFT adapter in fp32, to `output_dir`.

        Under DeepSpeed only the adapter's weights are gathered (the optimizer's fp32 master weights in a bf16/fp16
        run), whatever `stage3_gather_16bit_weights_on_model_save` says: a collective call, made on every rank.
        """
        state_dict = (
            adapter_state_dict(self.model, DEFAULT_ADAPTER, deepspeed_enabled=True)
            if self.is_deepspeed_enabled
            else None
        )
        if self.args.should_save:
            with atomic_path(output_dir) as tmp:
                self.model.save_pretrained(tmp, state_dict=state_dict, selected_adapters=[DEFAULT_ADAPTER])
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """
        Save the model. Once the curriculum has finished, this writes the combined adapter of every stage (a standard
        LoRA adapter for the original base model) and the tokenizer; during training (checkpoints) it saves as
        [`~trl.SFTTrainer`] does.
        """
        # Once the curriculum has run, every save gives the whole curriculum, `push_to_hub`'s internal one included.
        if self.curriculum_state.stage < len(self.stages) or not self.stage_summaries:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            stage_dirs = [stage_dir(self.args.output_dir, stage.number) for stage in self.trained_stages]
            self.create_model_card(model_name=_model_name(self.args))  # TRL writes it to `args.output_dir`
            os.makedirs(output_dir, exist_ok=True)
            # Written whole in a staging folder, then installed with the adapter config last: a crash leaves the
            # previous adapter or none, never new weights beside an old config.
            with tempfile.TemporaryDirectory(prefix=".final-adapter-", suffix=".tmp", dir=output_dir) as staging:
                concatenate_lora_adapters(stage_dirs, staging)
                self.processing_class.save_pretrained(staging)
                torch.save(self.args, os.path.join(staging, TRAINING_ARGS_NAME))
                if os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
                    shutil.copy(os.path.join(self.args.output_dir, "README.md"), os.path.join(staging, "README.md"))
                install_files(staging, output_dir, entry_point=ADAPTER_CONFIG_NAME)
        self.accelerator.wait_for_everyone()


def curriculum_card_section(trainer: "CurriculumSFTTrainer") -> str:
    """The model card's curriculum section: what was trained, stage by stage."""
    lines = [
        "### Curriculum",
        "",
        f"Trained with `trl_plrs`' `CurriculumSFTTrainer`: curriculum sequential fine-tuning with "
        f"Progressive LoRA Rank Shrinking, from [{PAPER_TITLE}]({PAPER_URL}) (AI4MATH @ ICML 2025). Each stage trained "
        f"a fresh LoRA adapter on its levels (plus replay: `{trainer.replay}`); finished adapters were carried by "
        f"`{trainer.adapter_transition}`. This repository holds one LoRA adapter equal to the sum of the stage "
        "adapters, for the original base model.",
        "",
        "| stage | levels | rows | rank | alpha | steps | train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for summary in trainer.stage_summaries:
        loss = summary.get("train_loss")
        lines.append(
            f"| {summary['stage']} | {', '.join(map(str, summary['levels']))} | {summary['rows']:,} | "
            f"{summary['lora_rank']} | {summary['lora_alpha']:g} | {summary['steps']} | "
            f"{'-' if loss is None else f'{loss:.4f}'} |"
        )
    heatmap = os.path.join(trainer.args.output_dir, "forgetting_heatmap.png")
    if os.path.isfile(heatmap):
        lines += [
            "",
            "Evaluation per level after every stage (the forgetting matrix):",
            "",
            "![](forgetting_heatmap.png)",
        ]
    return "\n".join(lines) + "\n\n"


def _model_name(args) -> str:
    return (
        args.hub_model_id.split("/")[-1] if args.hub_model_id else os.path.basename(os.path.abspath(args.output_dir))
    )


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


def _check_peft_config(model, peft_config) -> None:
    # (`accelerate.utils.is_peft_model` would import DeepSpeed, which logs 'Setting accelerator to CPU', to unwrap an
    # engine that a model passed to `__init__` cannot be.)
    if isinstance(model, PeftModel):
        raise ValueError(
            "`model` is already a `PeftModel`. `CurriculumSFTTrainer` creates and swaps the LoRA adapters itself: "
            "pass the base model (merge the existing adapter first with `model.merge_and_unload()`) and a "
            "`peft_config`."
        )
    if peft_config is None:
        raise ValueError(
            "`peft_config` is required: every curriculum stage trains a fresh LoRA adapter. Pass e.g. "
            "`peft_config=LoraConfig(target_modules='all-linear', lora_dropout=0.05)`."
        )
    if not isinstance(peft_config, LoraConfig):
        kind = type(peft_config).__name__ if isinstance(peft_config, PeftConfig) else repr(peft_config)
        raise ValueError(
            f"`peft_config` must be a `peft.LoraConfig`, but the value passed is {kind}. Progressive rank shrinking "
            "applies to LoRA adapters only."
        )
    if peft_config.init_lora_weights not in EXACT_LORA_INITS:
        raise ValueError(
            f"`peft_config.init_lora_weights` is {peft_config.init_lora_weights!r}, which does not start a new adapter "
            "at B = 0 on unchanged base weights (PiSSA, OLoRA, LoftQ and CorDA rewrite the base weights, `False` and "
            "'orthogonal' start with B != 0): every stage transition would change the model and the exported adapter "
            "would not reproduce it. Use `init_lora_weights=True` (the default) or 'gaussian'."
        )
    unsupported = {
        "use_dora": peft_config.use_dora,
        "rank_pattern": peft_config.rank_pattern,
        "alpha_pattern": peft_config.alpha_pattern,
        "modules_to_save": peft_config.modules_to_save,
        "lora_bias": peft_config.lora_bias,
        "trainable_token_indices": peft_config.trainable_token_indices,
    }
    for name, value in unsupported.items():
        if value:
            raise ValueError(
                f"`peft_config.{name}` is not supported by `CurriculumSFTTrainer` (value passed: {value!r}): stage "
                "adapters must be plain LoRA A/B matrices of one rank so that they can be merged and concatenated. "
                f"Unset `{name}`."
            )


def _check_first_stage_adapter(config: LoraConfig) -> None:
    """Refuse what `SFTTrainer` added to the first stage's LoRA config and the stages could not carry."""
    added = {
        name: getattr(config, name) for name in ("modules_to_save", "trainable_token_indices") if getattr(config, name)
    }
    if added:
        raise ValueError(
            f"`SFTTrainer` made {added} trainable beside the first stage's LoRA adapter, because the tokenizer gained "
            "tokens (e.g. from `chat_template_path`). Full embedding rows and modules cannot be carried across stages "
            "or into the combined LoRA adapter. Use a chat template that adds no tokens (the model's own, or one "
            "written with its existing special tokens), or add the tokens and train their embeddings before the "
            "curriculum."
        )


def _check_lora_targets(layers, peft_config: LoraConfig) -> None:
    """Refuse LoRA targets whose adapters cannot be carried across stages exactly."""
    # A quantized base keeps its `Linear4bit`/`Linear8bitLt`, subclasses of `nn.Linear`.
    unsupported = sorted(
        {
            type(layer.get_base_layer()).__name__
            for layer in layers
            if not isinstance(layer.get_base_layer(), nn.Linear)
        }
    )
    if unsupported:
        raise ValueError(
            f"`peft_config.target_modules` ({peft_config.target_modules!r}) targets layers of type {unsupported} (e.g. "
            "`embed_tokens`): their LoRA adapters cannot be carried across stages exactly. Target the linear "
            "projections only, e.g. `target_modules='all-linear'` (which leaves out `lm_head`)."
        )


def _check_train_dataset(train_dataset) -> None:
    if train_dataset is None:
        raise ValueError("`train_dataset` is required: the curriculum is built from its levels.")
    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            f"`train_dataset` must be a map-style `datasets.Dataset`, but the value passed is a "
            f"`{type(train_dataset).__name__}`: each stage selects rows by level. Load it without `streaming=True`."
        )
    if len(train_dataset) == 0:
        raise ValueError("`train_dataset` is empty. Pass a dataset with at least one row per curriculum level.")
    columns = set(train_dataset.column_names)
    if {"problem", "solution"} <= columns and not columns & {"prompt", "completion", "messages", "text", "input_ids"}:
        raise ValueError(
            f"The training dataset has raw MATH columns ({sorted(columns)}) but no `prompt`/`completion`, `messages` "
            "or `text` for `SFTTrainer` to train on. Convert the rows first: `dataset.map(to_prompt_completion)` "
            "(from `trl_plrs`), which keeps the `level` column."
        )


def _select_leveled_rows(train_dataset, args: PLRSConfig) -> tuple[Dataset, list[int]]:
    """Parse each row's level; drop (or reject) rows without one. Returns the dataset and the level of each row."""
    _check_train_dataset(train_dataset)
    column = args.curriculum_column
    if column not in train_dataset.column_names:
        raise ValueError(
            f"`curriculum_column` is {column!r}, but the training dataset has no such column (columns: "
            f"{train_dataset.column_names}). Set `curriculum_column` to the column that holds each row's level."
        )
    levels = dataset_levels(train_dataset, column)
    unknown = [index for index, level in enumerate(levels) if level is None]
    if unknown:
        examples = sorted({repr(train_dataset[index][column]) for index in unknown[:5]})
        if not args.drop_unknown_levels:
            raise ValueError(
                f"{len(unknown)} rows of the training dataset have a `{column}` value that is not a level (e.g. "
                f"{', '.join(examples)}). Fix or remove those rows, or set `drop_unknown_levels=True` to drop them."
            )
        logger.warning(
            f"Dropped {len(unknown)} training rows whose `{column}` is not a level (e.g. {', '.join(examples)})."
        )
        keep = [index for index, level in enumerate(levels) if level is not None]
        train_dataset = train_dataset.select(keep)
        levels = [levels[index] for index in keep]
    return train_dataset, levels


def _prepare_for_computed_levels(train_dataset, eval_dataset, args: PLRSConfig):
    """
    With `curriculum_difficulty`, the levels are computed: a `curriculum_column` in the data is set aside (the
    computed levels win, with a warning), and each training row keeps its index in the dataset passed, for
    `difficulty.csv`.
    """
    _check_train_dataset(train_dataset)
    column, method = args.curriculum_column, method_name(args.curriculum_difficulty)
    if column in train_dataset.column_names:
        logger.warning(
            f"The training dataset has a `curriculum_column` {column!r}, and `curriculum_difficulty={method!r}` is set: "
            f"the computed levels win and the column is not used. Unset `curriculum_difficulty` to use the column."
        )
        train_dataset = train_dataset.remove_columns(column)
    if isinstance(eval_dataset, Dataset) and column in eval_dataset.column_names:
        eval_dataset = eval_dataset.remove_columns(column)  # binned with the training rows' thresholds instead
    train_dataset = train_dataset.add_column(DIFFICULTY_ROW_COLUMN, list(range(len(train_dataset))))
    return train_dataset, eval_dataset


@contextlib.contextmanager
def _scoring_model(model, device: torch.device, quantized: bool):
    """
    The base model, as it computes the difficulty scores: the adapter disabled; under ZeRO-3 with partitioned weights
    (`zero.Init`), gathered whole on every process; on the accelerator when DeepSpeed left it on the CPU.
    """
    params = list(model.parameters())
    gathered = contextlib.nullcontext()
    if any(hasattr(param, "ds_id") for param in params):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params)
    elif not quantized and params and params[0].device.type == "cpu" and device.type != "cpu":
        model.to(device)
    disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with gathered, disabled:
        yield model
