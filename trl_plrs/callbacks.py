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

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import CallbackHandler
from transformers.utils import logging as transformers_logging

from .curriculum import Stage


STAGE_EVENTS = ("on_stage_begin", "on_stage_end")


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
    The [`~transformers.TrainerCallback`] through which a [`CurriculumSFTTrainer`] drives its stages; the trainer
    installs it as its first [`CurriculumCallback`]. It tells the trainer that a stage begins or ends, and the trainer
    carries out the transition ([`CurriculumSFTTrainer.begin_stage`], [`CurriculumSFTTrainer.end_stage`]): at the
    beginning of stage k > 1 the finished adapter is merged into the base weights or folded into the one frozen
    adapter of the finished stages (`adapter_transition`), a fresh adapter of rank `lora_ranks[k-1]` becomes the only
    trainable one, the stage's rows (its levels plus the replay) become the training set, and a new optimizer and
    scheduler are built over the new adapter; at its end the stage's adapter is saved. Removing it makes `train()` fail
    with a clear error instead of silently training stage 1 over and over.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_stage_begin(self, args, state, control, stage: Stage, **kwargs):
        self.trainer.begin_stage(stage)

    def on_stage_end(self, args, state, control, stage: Stage, metrics: dict[str, float] | None = None, **kwargs):
        self.trainer.end_stage(stage, metrics or {})
