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

import os
import time
from typing import TYPE_CHECKING

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, ProgressCallback
from transformers.utils import logging as transformers_logging

from .adapters import (
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_ADAPTER,
    FROZEN_ADAPTER,
    activate_stage_adapters,
    add_stage_adapter,
    fuse_into_frozen,
    lora_layers,
    merge_adapter_into_base,
    stage_lora_config,
    upcast_base_weights,
)
from .curriculum import Stage


if TYPE_CHECKING:
    from .plrs_trainer import CurriculumSFTTrainer


logger = get_logger(__name__)

STAGE_EVENTS = ("on_stage_begin", "on_stage_end")
# Share of a merged update rounded away above which a merge warns (fp32 weights lose ~1e-7, bf16 ones up to ~0.8).
MERGE_LOSS_WARNING_THRESHOLD = 0.01
MERGE_TRANSITIONS = ("merge", "fp32_merge")


def stage_dir(output_dir: str, stage_number: int) -> str:
    """Folder where the adapter trained at stage `stage_number` (from 1) is saved."""
    return os.path.join(output_dir, f"stage-{stage_number}")


class CurriculumCallback(TrainerCallback):
    """
    A [`~transformers.TrainerCallback`] that also receives the stage events of a [`CurriculumSFTTrainer`].

    Every callback of a curriculum, this kind or not, sees the K stages as **one** training run: `on_train_begin` once,
    when the first stage's loop starts; `on_train_end` once, after the last stage, the final save and the final
    metrics; `state.global_step` only grows; every log carries `stage`, `lora_rank` and `trainable_params`, and
    `epoch` counts on across stages (`stage_epoch` restarts at every stage). Experiment trackers (TensorBoard, MLflow,
    W&B, Trackio, ...) therefore keep one run. Subclass this class to also act at the stage boundaries:

    ```python
    >>> class LogRank(CurriculumCallback):
    ...     def on_stage_begin(self, args, state, control, stage, **kwargs):
    ...         print(f"stage {stage.number}: rank {stage.lora_rank}")
    ```

    Both events get the usual keyword arguments of a Trainer event (`model`, `processing_class`, `optimizer`,
    `lr_scheduler`, `train_dataloader`, `eval_dataloader`), and may return a `TrainerControl` like any event.
    """

    def on_stage_begin(self, args, state, control, stage: Stage, **kwargs):
        """
        Called before stage `stage`'s training loop starts. [`PLRSCallback`] runs first: the stage's fresh adapter
        is in place, the finished one merged or frozen, and the trainer's `train_dataset` holds the stage's rows.
        The optimizer, scheduler and engine wrapper of the stage are built afterwards, when its loop starts.
        """

    def on_stage_end(self, args, state, control, stage: Stage, metrics: dict[str, float] | None = None, **kwargs):
        """
        Called after stage `stage`'s training loop ended (after its best model was loaded, with
        `load_best_model_at_end`). [`PLRSCallback`] runs first: the stage's adapter is saved to `output_dir/stage-{k}`.
        `metrics` holds the stage's train metrics (`train_loss`, `train_runtime`, ...).
        """


class CurriculumCallbackHandler(CallbackHandler):
    """
    The trainer's callback handler: the stages of one curriculum form a single training run for every callback.

    Each stage re-enters the Trainer's training loop, which sends `on_train_begin` and `on_train_end` every time.
    Between [`begin_curriculum`] and [`end_curriculum`] this handler forwards `on_train_begin` only the first time
    and holds back `on_train_end` until [`end_curriculum`]: trackers such as MLflow, Trackio or ClearML end their run
    in `on_train_end`, TensorBoard closes its writer, CodeCarbon stops measuring. Stage events go to the
    [`CurriculumCallback`] instances, in order.
    """

    def __init__(self, callbacks, model, processing_class, optimizer, lr_scheduler):
        # The callbacks come from the Trainer's own handler, already checked for duplicates: not warned about again.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            super().__init__(callbacks, model, processing_class, optimizer, lr_scheduler)
        finally:
            transformers_logging.set_verbosity(verbosity)
        self.in_curriculum = False
        self.curriculum_began = False

    def begin_curriculum(self) -> None:
        """From now on, the stages' training loops are one run for the callbacks."""
        self.in_curriculum, self.curriculum_began = True, False

    def end_curriculum(self, args, state, control):
        """Send the `on_train_end` held back during the curriculum (if a stage's loop started at all)."""
        began = self.in_curriculum and self.curriculum_began
        self.in_curriculum = self.curriculum_began = False
        return super().on_train_end(args, state, control) if began else control

    def on_train_begin(self, args, state, control):
        if self.in_curriculum:
            if self.curriculum_began:
                # What `CallbackHandler.on_train_begin` does besides calling the callbacks: the stage's loop must not
                # inherit the previous stage's stop.
                control.should_training_stop = False
                return control
            self.curriculum_began = True
        return super().on_train_begin(args, state, control)

    def on_train_end(self, args, state, control):
        if self.in_curriculum:
            return control
        return super().on_train_end(args, state, control)

    def on_stage_begin(self, args, state, control, stage: Stage):
        return self.call_stage_event("on_stage_begin", args, state, control, stage=stage)

    def on_stage_end(self, args, state, control, stage: Stage, metrics: dict[str, float] | None = None):
        return self.call_stage_event("on_stage_end", args, state, control, stage=stage, metrics=metrics)

    def call_stage_event(self, event: str, args, state, control, **kwargs):
        for callback in self.callbacks:
            if not isinstance(callback, CurriculumCallback):
                continue
            result = getattr(callback, event)(
                args,
                state,
                control,
                model=self.model,
                processing_class=self.processing_class,
                optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler,
                train_dataloader=self.train_dataloader,
                eval_dataloader=self.eval_dataloader,
                **kwargs,
            )
            if result is not None:
                control = result
        return control

    def check_stage_callbacks(self, plrs_callback: "PLRSCallback") -> None:
        """
        Fail before training when the stage mechanics were removed, or when a callback defines stage events without
        being a [`CurriculumCallback`] (it would silently never receive them).
        """
        stage_callbacks = [callback for callback in self.callbacks if isinstance(callback, CurriculumCallback)]
        if plrs_callback not in stage_callbacks:
            raise ValueError(
                "The trainer's `PLRSCallback` was removed from its callbacks (e.g. with `trainer.pop_callback`). It "
                "carries out the stage transitions (new adapter, stage rows, new optimizer); without it every stage "
                "would train stage 1's adapter on stage 1's rows. Keep it: remove other callbacks by instance."
            )
        if stage_callbacks[0] is not plrs_callback:
            raise ValueError(
                f"`PLRSCallback` must be the first stage callback, but `{type(stage_callbacks[0]).__name__}` comes "
                "before it: the other callbacks' stage events must see the transition done. Add callbacks with "
                "`trainer.add_callback`, which appends them."
            )
        for callback in self.callbacks:
            defined = [event for event in STAGE_EVENTS if hasattr(callback, event)]
            if defined and not isinstance(callback, CurriculumCallback):
                raise ValueError(
                    f"The callback `{type(callback).__name__}` defines {defined} but is a plain `TrainerCallback`, so "
                    "it would never receive them. Subclass `trl_plrs.CurriculumCallback` instead of `TrainerCallback`."
                )


class PLRSCallback(CurriculumCallback):
    """
    Carries out the curriculum's stage transitions for a [`CurriculumSFTTrainer`], which installs it as its first
    [`CurriculumCallback`]. Removing it makes `train()` fail with a clear error instead of silently training stage 1
    over and over.

    At the beginning of stage k > 1 the finished adapter is merged into the base weights (the trainer's resolved
    `adapter_transition` is `"merge"`, or `"fp32_merge"`, which first upcasts the targeted weights to fp32) or folded
    into the one frozen, active adapter `"frozen_stages"` that carries stages 1..k-1 (`"stack"`), then a fresh adapter of rank `lora_ranks[k-1]` is added as
    the only trainable one, the stage's rows (its levels plus the replay) become the training set, and the optimizer
    and learning-rate scheduler are dropped so that the trainer builds new ones over the new adapter alone.
    """

    def __init__(self, trainer: "CurriculumSFTTrainer"):
        self.trainer = trainer
        self._stage_start_time = None

    def on_stage_begin(self, args, state, control, stage: Stage, **kwargs):
        trainer = self.trainer
        if stage.index > trainer.curriculum_state.adapter_stage:
            self.swap_adapter(stage)
        trainer.train_dataset = trainer.pack_stage_rows(trainer.build_stage_dataset(stage))
        # A new optimizer and scheduler over the new adapter only: the Trainer builds them when these are `None`.
        trainer.optimizer, trainer.lr_scheduler = None, None
        # The model is wrapped again (DDP, DeepSpeed) when training re-enters; reusing the old wrapper would leave the
        # new adapter's gradients unsynchronised across ranks.
        trainer.model_wrapped = trainer.model
        trainer.curriculum_state.trainable_params = sum(
            param.numel() for param in trainer.model.parameters() if param.requires_grad
        )
        self._stage_start_time = time.perf_counter()
        logger.info(
            f"Stage {stage.number}/{len(trainer.stages)}: levels {list(stage.levels)}, "
            f"{len(trainer.train_dataset):,} rows, LoRA r={stage.lora_rank} alpha={stage.lora_alpha:g}, "
            f"{trainer.curriculum_state.trainable_params:,} trainable parameters"
        )

    def swap_adapter(self, stage: Stage):
        """Retire the finished adapter (merge or freeze) and add the stage's fresh one."""
        trainer = self.trainer
        model = trainer.model
        finished = trainer.stages[trainer.curriculum_state.adapter_stage]
        if trainer.adapter_transition in MERGE_TRANSITIONS:
            self._merge(finished)
        else:
            fuse_into_frozen(model)
            trainer.curriculum_state.frozen_adapters = [FROZEN_ADAPTER]
        self._add_fresh_adapter(stage)

    def _merge(self, finished: Stage) -> None:
        if self.trainer.adapter_transition == "fp32_merge":
            upcast_base_weights(self.trainer.model)  # once: later calls find the weights in fp32 already
        lost = merge_adapter_into_base(self.trainer.model)
        for summary in self.trainer.stage_summaries:
            if summary["stage"] == finished.number:
                summary["merge_rounding_loss"] = lost
        if lost > MERGE_LOSS_WARNING_THRESHOLD:
            dtypes = sorted({str(layer.get_base_layer().weight.dtype) for layer in lora_layers(self.trainer.model)})
            logger.warning(
                f"Merging stage {finished.number}'s adapter into the {', '.join(dtypes)} base weights rounded away "
                f"{lost:.0%} of its update (norm of the lost part / norm of the update): the model that trains on "
                "no longer has what that stage learned, though its saved adapter does. Set "
                "`adapter_transition='auto'` (or 'stack') to keep finished adapters exact beside the new one, or load "
                "the base in float32 to merge exactly."
            )

    def _add_fresh_adapter(self, stage: Stage):
        trainer = self.trainer
        add_stage_adapter(
            trainer.model,
            stage_lora_config(trainer.stage_peft_config, stage),
            frozen_adapters=trainer.curriculum_state.frozen_adapters,
            autocast_adapter_dtype=trainer.autocast_adapter_dtype,
        )
        if trainer.is_quantized:
            # As `SFTTrainer` does for the first adapter: QLoRA keeps the adapter weights in bf16.
            for param in trainer.model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
        trainer.curriculum_state.adapter_stage = stage.index

    def restore_finished_stages(self, stage_index: int):
        """
        Rebuild, for a resume at the stage of index `stage_index` (from 0), what every earlier stage learned from its
        saved adapter in `output_dir/stage-{k}` (merged into the base weights, or frozen and active), then add that
        stage's adapter.
        """
        if stage_index == 0:
            return
        trainer = self.trainer
        model = trainer.model
        model.delete_adapter(DEFAULT_ADAPTER)
        trainer.curriculum_state.frozen_adapters = []
        for finished in trainer.stages[:stage_index]:
            path = stage_dir(trainer.args.output_dir, finished.number)
            if not os.path.isfile(os.path.join(path, ADAPTER_WEIGHTS_NAME)):
                raise ValueError(
                    f"Cannot resume at stage {stage_index + 1}: the adapter of finished stage {finished.number} is missing "
                    f"from {path}. Resume with the `output_dir` of the run that wrote the checkpoint."
                )
            model.load_adapter(path, adapter_name=DEFAULT_ADAPTER)
            if trainer.adapter_transition in MERGE_TRANSITIONS:
                self._merge(finished)
            else:
                # The same fusion as at the transition, from the same values: the frozen adapter is rebuilt bit for bit.
                fuse_into_frozen(model)
                trainer.curriculum_state.frozen_adapters = [FROZEN_ADAPTER]
        self._add_fresh_adapter(trainer.stages[stage_index])

    def activate_adapters(self):
        """Activate the trainable adapter and the frozen ones of finished stages (stack mode; a no-op in merge mode)."""
        frozen = self.trainer.curriculum_state.frozen_adapters
        if frozen:
            model = self.trainer.model
            # A checkpoint written before the stages were fused holds one frozen adapter per stage (`stage_{k}`): their
            # sum is `frozen_stages` already, rebuilt from the stage folders.
            for name in [name for name in model.peft_config if name not in (DEFAULT_ADAPTER, *frozen)]:
                model.delete_adapter(name)
            activate_stage_adapters(model, frozen)

    def on_stage_end(self, args, state, control, stage: Stage, **kwargs):
        self.trainer.save_stage_adapter(stage_dir(args.output_dir, stage.number))
        metrics = kwargs.get("metrics") or {}
        self.trainer.stage_summaries.append(
            {
                "stage": stage.number,
                "levels": list(stage.levels),
                "rows": len(self.trainer.train_dataset),
                "lora_rank": stage.lora_rank,
                "lora_alpha": stage.lora_alpha,
                "trainable_params": self.trainer.curriculum_state.trainable_params,
                "steps": state.global_step - self.trainer.curriculum_state.stage_start_step,
                "samples": round(len(self.trainer.train_dataset) * (state.epoch or 0.0)),
                "train_loss": metrics.get("train_loss"),
                "train_runtime": time.perf_counter() - self._stage_start_time,
            }
        )


# Keys shown in a log line's prefix, or not at all, by [`CurriculumProgressCallback`].
_PREFIX_KEYS = ("stage", "lora_rank", "trainable_params", "stage_epoch", "epoch", "total_flos")


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_log_line(logs: dict, num_stages: int) -> str:
    """
    One readable line for a Trainer log: `stage k/K` and the epoch first, then `name value` pairs; per-level metrics
    (`eval_level_<j>/<metric>`) are grouped as `<metric> by level: <j> <value>, ...`.

    >>> format_log_line({"loss": 0.51234, "learning_rate": 1e-4, "stage": 2, "lora_rank": 128, "epoch": 1.5}, 5)
    'stage 2/5 (r=128), epoch 1.5 | loss 0.5123 | learning_rate 0.0001'
    """
    prefix = f"stage {logs['stage']}/{num_stages}" if "stage" in logs else "curriculum"
    if "lora_rank" in logs:
        prefix += f" (r={logs['lora_rank']})"
    if "epoch" in logs:
        prefix += f", epoch {_format_value(logs['epoch'])}"
    parts, per_level = [prefix], {}
    for key, value in logs.items():
        if key in _PREFIX_KEYS:
            continue
        level, _, metric = key.removeprefix("eval_level_").partition("/")
        if key.startswith("eval_level_") and metric:
            per_level.setdefault(metric, []).append(f"{level} {_format_value(value)}")
        else:
            parts.append(f"{key} {_format_value(value)}")
    parts += [f"{metric} by level: {', '.join(values)}" for metric, values in per_level.items()]
    return " | ".join(parts)


class CurriculumProgressCallback(CurriculumCallback, ProgressCallback):
    """
    A [`~transformers.trainer_callback.ProgressCallback`] for a curriculum: one labelled bar per stage, counting that
    stage's steps, one labelled bar per evaluation, log lines prefixed with the stage, and one summary line at the end
    of every stage (what it trained, where its adapter went).

    The curriculum sends `on_train_begin` once, so each stage's bar opens at the stage's first step (when the stage's
    step count is known) and closes at the stage's end.
    """

    def __init__(self, trainer: "CurriculumSFTTrainer", max_str_len: int = 100):
        super().__init__(max_str_len=max_str_len)
        self.trainer = trainer
        self._evaluation_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.training_bar is not None:
            return
        start = self.trainer.curriculum_state.stage_start_step
        stage = self.trainer.stages[self.trainer.curriculum_state.stage]
        self.training_bar = tqdm(
            total=state.max_steps - start,
            initial=state.global_step - start,
            dynamic_ncols=True,
            desc=f"Stage {stage.number}/{len(self.trainer.stages)} (levels "
            f"{','.join(map(str, stage.levels))}, r={stage.lora_rank})",
        )
        self.current_step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self._evaluation_bar is not None:  # inside `evaluation_bar()`: its one bar stands for every loop
            return
        if state.is_world_process_zero and self.prediction_bar is None and eval_dataloader is not None:
            self.prediction_bar = tqdm(
                total=len(eval_dataloader), desc="Evaluating", leave=False, dynamic_ncols=True, unit="batch"
            )
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def evaluation_bar(self, description: str, total: int) -> "tqdm | None":
        """
        Open one labelled bar for an evaluation made of several loops (e.g. one per level); the Trainer's own
        prediction bars stay closed until [`close_evaluation_bar`]. `None` on other processes.
        """
        if self.trainer.is_world_process_zero():
            self._evaluation_bar = tqdm(total=total, desc=description, dynamic_ncols=True, unit="level")
        return self._evaluation_bar

    def close_evaluation_bar(self) -> None:
        if self._evaluation_bar is not None:
            self._evaluation_bar.close()
            self._evaluation_bar = None

    def write(self, line: str) -> None:
        """Print `line` above the bars, on the main process."""
        if self.trainer.is_world_process_zero():
            tqdm.write(line)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if self.trainer.curriculum_state.stage >= len(self.trainer.stages):  # the whole curriculum's metrics
                logs = {key: value for key, value in logs.items() if key not in ("stage", "lora_rank")}
            self.write(format_log_line(logs, len(self.trainer.stages)))

    def on_stage_end(self, args, state, control, stage: Stage, **kwargs):
        self._close_training_bar()
        summary = self.trainer.stage_summaries[-1] if self.trainer.stage_summaries else None
        if summary is None or summary["stage"] != stage.number:
            return
        loss = summary.get("train_loss")
        self.write(
            f"Stage {stage.number}/{len(self.trainer.stages)} done: levels {','.join(map(str, stage.levels))} "
            f"({summary['rows']:,} rows with replay '{self.trainer.replay}'), LoRA r={stage.lora_rank}, "
            f"{summary['steps']} step{'s' * (summary['steps'] != 1)} in {summary['train_runtime']:.1f} s"
            + ("" if loss is None else f", train loss {loss:.4f}")
            + f"; adapter saved to {stage_dir(args.output_dir, stage.number)}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._close_training_bar()
        if self.trainer.stage_summaries:
            self.write(
                f"Curriculum done ({len(self.trainer.stage_summaries)} stages): the combined adapter for the original "
                f"base model is in {args.output_dir} (PeftModel.from_pretrained(base, {args.output_dir!r}))."
            )

    def _close_training_bar(self) -> None:
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None
