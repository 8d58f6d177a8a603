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
Every use of a private name of transformers' [`~transformers.Trainer`] or TRL's [`~trl.SFTTrainer`], in one place.

A curriculum re-enters the Trainer's training loop once per stage, and a few of the loop's private steps must know
about it (the step count, checkpoints, resume). Each override or access below names the upstream method it relies
on. Checked against the whole range that `setup.cfg` allows: transformers 5.20.0, 5.24.0 and 5.25.0, TRL 1.16.0
(`.ci/run` runs the core tests against the lowest and the newest versions). transformers 5.25's public
`Trainer.get_resumed_dataloader` decides *how* a resumed epoch skips its batches; how many a stage skips is the
curriculum's (`continue_training_state`), so the override of `_init_training_state` stays.
[`check_trainer_internals`] fails at trainer construction, with the versions to install, when an upstream release
removed one of them.

The rest of the package uses public API only; `tests/test_trainer_internals.py` greps it to keep it so.
"""

import contextlib
import copy
import importlib.metadata
import os
import time
import warnings

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_callback import EarlyStoppingCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .resume import resumed_stage_position


# The Trainer methods overridden or called below, each checked present at trainer construction.
REQUIRED_TRAINER_METHODS = (
    "_init_training_state",
    "_save_checkpoint",
    "_load_from_checkpoint",
    "_load_rng_state",
    "_prepare_dataset",
    "_save_optimizer_and_scheduler",
    "_prepare_for_training",
)
TESTED_VERSIONS = {"transformers": "5.20.0 to 5.25.0", "trl": "1.16.0"}


def check_trainer_internals() -> None:
    """Raise one clear error when the installed transformers lacks a Trainer method the curriculum overrides."""
    from trl import SFTTrainer

    missing = [name for name in REQUIRED_TRAINER_METHODS if not callable(getattr(SFTTrainer, name, None))]
    if missing:
        installed = {name: importlib.metadata.version(name) for name in TESTED_VERSIONS}
        raise ImportError(
            f"`CurriculumSFTTrainer` relies on the Trainer methods {missing}, which the installed transformers "
            f"{installed['transformers']} (TRL {installed['trl']}) does not have. Install the tested versions: "
            + ", ".join(f"{name} {versions}" for name, versions in TESTED_VERSIONS.items())
            + " (`pip install -e .` pins them)."
        )


class TrainerInternalsMixin:
    """
    The overrides of private [`~transformers.Trainer`] methods that a curriculum needs; mixed into
    [`~trl_plrs.CurriculumSFTTrainer`] before [`~trl.SFTTrainer`]. Each delegates the curriculum's part to a public
    method of the trainer. Beside the continuation of the training state, which resets and carries them: a stage's
    loss and training time over all its steps, a resumed run's included.
    """

    @property
    def engine(self) -> str | None:
        """The engine that owns the weights: `"DeepSpeed"`, `"FSDP"`, or `None` (one process, DDP)."""
        return "DeepSpeed" if self.is_deepspeed_enabled else "FSDP" if self.is_fsdp_enabled else None

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ) -> tuple[int, int]:
        # `Trainer._init_training_state` (split out of `_inner_training_loop` in transformers 5.x, positional
        # arguments as passed there) builds a fresh `TrainerState` at every `train()`, or loads the checkpoint's, and
        # returns `(epochs_trained, steps_trained_in_current_epoch)` computed from `global_step`.
        previous = self.state
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        resumed = resume_from_checkpoint is not None
        return self.continue_training_state(
            previous,
            resumed,
            max_steps,
            num_update_steps_per_epoch,
            num_train_epochs,
            epochs_trained,
            steps_trained_in_current_epoch,
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
            self.curriculum_state.stage_loss_sum = 0.0
            self.curriculum_state.stage_runtime = 0.0
        else:
            epochs_trained, steps_trained_in_current_epoch = resumed_stage_position(
                steps_in_stage=self.state.global_step - self.curriculum_state.stage_start_step,
                stage_closed=early_stopped_at_checkpoint(self.state),
                max_steps=max_steps,
                num_update_steps_per_epoch=num_update_steps_per_epoch,
                num_train_epochs=num_train_epochs,
                skip_data=not self.args.ignore_data_skip,
                gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            )
        self.state.max_steps = self.curriculum_state.stage_start_step + max_steps
        self.stage_call_start_step = self.state.global_step  # where this call's steps (and summed loss) begin
        return epochs_trained, steps_trained_in_current_epoch

    def _stage_loss(self, loss_this_call: float | None, steps: int) -> float | None:
        """The stage's mean training loss over all its steps: those of a run it resumed count too."""
        steps_this_call = self.state.global_step - self.stage_call_start_step
        if loss_this_call is None or steps_this_call == steps:
            return loss_this_call
        return (self.curriculum_state.stage_loss_sum + loss_this_call * steps_this_call) / max(steps, 1)

    def _stage_runtime(self) -> float:
        """Seconds the stage has trained: those of a run it resumed count too."""
        return self.curriculum_state.stage_runtime + time.perf_counter() - self._stage_start_time

    def _save_checkpoint(self, model, trial) -> None:
        # `Trainer._save_checkpoint(model, trial)` writes `output_dir/{PREFIX_CHECKPOINT_DIR}-{global_step}` and writes
        # `trainer_state.json` last; the curriculum state is written before it, so a checkpoint with both is whole.
        # The training loss this `train()` call has summed so far (`_total_loss_scalar`, drained from `_tr_loss` at every
        # log; transformers 5.20-5.25) goes with it, so that a resumed stage reports its loss over all its steps.
        if self.args.should_save:
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self.save_curriculum_state(checkpoint_dir, loss_this_call=self._total_loss_scalar + self._tr_loss.item())
        super()._save_checkpoint(model, trial)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # `Trainer._save_optimizer_and_scheduler(output_dir)` writes `optimizer.pt` and `scheduler.pt` into a checkpoint.
        # At a stage's last step (where transformers also saves when `save_strategy="steps"`, so every stage ends with
        # a checkpoint) they are of no use: the next stage builds a new optimizer and scheduler, and a resume from
        # that checkpoint runs no step of its stage. Skipped there, except under DeepSpeed and FSDP, whose resume loads
        # the engine's checkpoint written here (under FSDP with `SHARDED_STATE_DICT` it holds the only copy of the
        # model's weights). The checkpoint keeps the weights, the RNG state and the curriculum state exact resume needs.
        if self.state.global_step >= self.state.max_steps and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return
        super()._save_optimizer_and_scheduler(output_dir)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        # `Trainer._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)` (transformers 5.20-5.25)
        # wraps the model (under FSDP2 `fully_shard`, which with `cpu_ram_efficient_loading` replaces the parameters),
        # builds the optimizer and loads the checkpoint; returns `(model, train_dataloader)`. What must act on the
        # parameters training will use comes after it.
        prepared = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        self.after_model_prepared()
        return prepared

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # `Trainer._load_from_checkpoint` reloads the PEFT adapters of a checkpoint, then activates only the first
        # active one; the frozen stage adapters are activated again after it. With frozen adapters (saved in
        # sub-folders of the checkpoint), transformers 5.20 loads only the sub-folders and skips the trainable
        # "default" adapter at the checkpoint's root (5.24 loads it): it is loaded here on every version, which
        # makes a stack-mode resume exact on the whole tested range.
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.after_checkpoint_load(resume_from_checkpoint)

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        # `SFTTrainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)`
        # (TRL 1.16) tokenizes, builds the labels, truncates to `max_length` unless packing, and packs. A curriculum
        # packs each stage's own rows instead (`CurriculumSFTTrainer.pack_stage_rows`), so its training set is
        # prepared exactly as `SFTTrainer` prepares it before packing: neither truncated nor packed.
        if dataset_name == "train" and packing:
            args = copy.copy(args)
            args.max_length = None
            packing = False
        # TRL tokenizes whole rows and truncates them to `max_length` afterwards, so the tokenizer's one-time
        # "Token indices sequence length is longer than the specified maximum (N > model_max_length)" warning speaks
        # of a limit that training does not use; the trainer reports the rows that truncation changes itself.
        # `PreTrainedTokenizerBase.deprecation_warnings` holds the warnings already given (transformers 5.20-5.25).
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if isinstance(getattr(tokenizer, "deprecation_warnings", None), dict):
            tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)

    def restore_rng_state(self, checkpoint: str) -> None:
        """Restore the RNG states saved in `checkpoint` (`Trainer._load_rng_state`)."""
        self._load_rng_state(checkpoint)


def move_to_activation_checkpointing(args) -> None:
    """
    transformers 5.24 renamed `TrainingArguments.gradient_checkpointing` to `activation_checkpointing` (5.25 too) and warns on
    the old name, which TRL 1.16's `SFTConfig` sets by default: the value is passed on under the new name (and its
    kwargs with it) before `TrainingArguments.__post_init__` warns. A no-op on 5.20-5.23, which have no
    `activation_checkpointing`; can go once TRL sets the new name.
    """
    if getattr(args, "activation_checkpointing", False) is None and args.gradient_checkpointing is not None:
        args.activation_checkpointing, args.gradient_checkpointing = args.gradient_checkpointing, None
        if args.gradient_checkpointing_kwargs is not None and args.activation_checkpointing_kwargs is None:
            args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs
            args.gradient_checkpointing_kwargs = None


@contextlib.contextmanager
def quiet_peft_gradient_checkpointing_warning():
    """
    Around `SFTTrainer.__init__` and our own `PeftModel.from_pretrained` calls (`examples/evaluate_math.py`, the vLLM
    merge): PEFT 0.21's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, which transformers 5.24
    deprecates with a `FutureWarning` about PEFT's code, not the user's. Can go once PEFT reads
    `is_activation_checkpointing`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def sft_autocast_adapter_dtype(args, is_quantized: bool) -> bool:
    """
    PEFT's `autocast_adapter_dtype` as `SFTTrainer.__init__` passes it when it creates the first adapter (TRL 1.16):
    `False` under DeepSpeed ZeRO-3 on an unquantized base (adapters in the base's dtype, for ZeRO-3's coalesced
    gathers), else PEFT's default `True`. Later stages' adapters are created the same way.
    """
    return not (args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3 and not is_quantized)


def cast_adapter_like_sft(model, is_quantized: bool) -> None:
    """
    As `SFTTrainer.__init__` casts the first adapter on a quantized base (TRL 1.16, QLoRA's recommendation): the
    trainable parameters in bf16. Applied to every later stage's adapter.
    """
    if not is_quantized:
        return
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)


def pop_accumulated_metrics(trainer: Trainer, split: str) -> dict[str, float]:
    """
    The means of the metrics that [`~trl.SFTTrainer`] accumulated per batch since the last `log()` (token accuracy,
    entropy), removed so that the next `log()` does not report them again. TRL keeps them in `SFTTrainer._metrics`
    (`{"train"|"eval": {name: [values]}}`, TRL 1.16); `num_tokens` is a running count of training tokens, not a mean,
    and is left out.
    """
    accumulated = getattr(trainer, "_metrics", {}).get(split)
    if not accumulated:
        return {}
    means = {
        name: sum(values) / len(values) for name, values in accumulated.items() if values and name != "num_tokens"
    }
    accumulated.clear()
    return means


def reset_early_stopping(callbacks: list[TrainerCallback]) -> None:
    """Give every [`~transformers.EarlyStoppingCallback`] a fresh patience (its counter persists across `train()`)."""
    for callback in callbacks:
        if isinstance(callback, EarlyStoppingCallback):
            callback.early_stopping_patience_counter = 0


def early_stopping_triggered(callback: EarlyStoppingCallback) -> bool:
    """Whether an [`~transformers.EarlyStoppingCallback`] ran out of patience (and so stopped training)."""
    return callback.early_stopping_patience_counter >= callback.early_stopping_patience


def early_stopped_at_checkpoint(state) -> bool:
    """
    Whether a checkpoint's `TrainerState` (as `TrainerState.load_from_json` reads it) was saved by the step at which
    an [`~transformers.EarlyStoppingCallback`] ran out of patience and stopped training. The Trainer saves each
    `ExportableState` callback's attributes and the `TrainerControl` in `state.stateful_callbacks`
    (`{name: {"args": ..., "attributes": ...}}`, or a list of those per class; transformers 5.20-5.25).
    """
    saved = state.stateful_callbacks or {}

    def entries(name):
        value = saved.get(name) or []
        return value if isinstance(value, list) else [value]

    ran_out = any(
        entry["attributes"].get("early_stopping_patience_counter", 0)
        >= entry["args"].get("early_stopping_patience", 1)
        for name in ("EarlyStoppingCallback", "StageEarlyStoppingCallback")
        for entry in entries(name)
    )
    stopped = any(entry["args"].get("should_training_stop") for entry in entries("TrainerControl"))
    return ran_out and stopped


def close_prediction_bars(callbacks: list[TrainerCallback]) -> None:
    """
    Close the evaluation bar that `Trainer.evaluation_loop` opened in every [`~transformers.ProgressCallback`]; only
    `on_evaluate` closes it, and that event is not sent for the per-level evaluations.
    """
    for callback in callbacks:
        if isinstance(callback, ProgressCallback) and callback.prediction_bar is not None:
            callback.prediction_bar.close()
            callback.prediction_bar = None


def model_name_or_path(model) -> str:
    """The hub id or path a model was loaded from (`PretrainedConfig._name_or_path`), or its class name."""
    if isinstance(model, str):
        return model
    return getattr(model.config, "_name_or_path", "") or type(model).__name__
