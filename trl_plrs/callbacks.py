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
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from .adapters import (
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_ADAPTER,
    activate_stage_adapters,
    add_stage_adapter,
    disable_dropout,
    freeze_adapter_as,
    merge_adapter_into_base,
    stage_adapter_name,
    stage_lora_config,
)
from .curriculum import Stage


if TYPE_CHECKING:
    from .plrs_trainer import CurriculumSFTTrainer


logger = get_logger(__name__)


def stage_dir(output_dir: str, stage_index: int) -> str:
    """Folder where the adapter trained at stage `stage_index` is saved."""
    return os.path.join(output_dir, f"stage-{stage_index}")


class PLRSCallback(TrainerCallback):
    """
    Carries out the curriculum's stage transitions for a [`CurriculumSFTTrainer`], which installs it.

    Besides the usual [`~transformers.TrainerCallback`] events, the trainer sends two events of its own to every
    callback that defines them, with the [`Stage`] as keyword argument `stage`:

    - `on_stage_begin(args, state, control, stage, **kwargs)`: before the stage's training loop starts. This callback
      runs first: it has already swapped in the stage's fresh adapter and built its dataset when yours runs.
    - `on_stage_end(args, state, control, stage, metrics, **kwargs)`: after the stage's training loop; this callback
      has saved the stage's adapter to `output_dir/stage-{k}`, and `metrics` holds the stage's train metrics.

    At the beginning of stage k > 0 the finished adapter is merged into the base weights (`adapter_transition="merge"`)
    or kept frozen and active as `stage_{k-1}` (`"stack"`), then a fresh adapter of rank `lora_ranks[k]` is added as
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
        trainer.train_dataset = trainer.build_stage_dataset(stage)
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
            f"Stage {stage.index + 1}/{len(trainer.stages)}: levels {list(stage.levels)}, "
            f"{len(trainer.train_dataset):,} rows, LoRA r={stage.lora_rank} alpha={stage.lora_alpha:g}, "
            f"{trainer.curriculum_state.trainable_params:,} trainable parameters"
        )

    def swap_adapter(self, stage: Stage):
        """Retire the finished adapter (merge or freeze) and add the stage's fresh one."""
        trainer = self.trainer
        model = trainer.model
        finished_index = trainer.curriculum_state.adapter_stage
        if trainer.args.adapter_transition == "merge":
            merge_adapter_into_base(model)
        else:
            frozen_name = stage_adapter_name(finished_index)
            freeze_adapter_as(model, frozen_name)
            trainer.curriculum_state.frozen_adapters.append(frozen_name)
        self._add_fresh_adapter(stage)

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
        Rebuild, for a resume at stage `stage_index`, what every earlier stage learned from its saved adapter in
        `output_dir/stage-{k}` (merged into the base weights, or frozen and active), then add that stage's adapter.
        """
        if stage_index == 0:
            return
        trainer = self.trainer
        model = trainer.model
        model.delete_adapter(DEFAULT_ADAPTER)
        trainer.curriculum_state.frozen_adapters = []
        for finished in trainer.stages[:stage_index]:
            path = stage_dir(trainer.args.output_dir, finished.index)
            if not os.path.isfile(os.path.join(path, ADAPTER_WEIGHTS_NAME)):
                raise ValueError(
                    f"Cannot resume at stage {stage_index}: the adapter of finished stage {finished.index} is missing "
                    f"from {path}. Resume with the `output_dir` of the run that wrote the checkpoint."
                )
            if trainer.args.adapter_transition == "merge":
                model.load_adapter(path, adapter_name=DEFAULT_ADAPTER)
                merge_adapter_into_base(model)
            else:
                frozen_name = stage_adapter_name(finished.index)
                model.load_adapter(path, adapter_name=frozen_name, is_trainable=False)
                disable_dropout(model, frozen_name)
                trainer.curriculum_state.frozen_adapters.append(frozen_name)
        self._add_fresh_adapter(trainer.stages[stage_index])

    def activate_adapters(self):
        """Activate the trainable adapter and the frozen ones of finished stages (stack mode)."""
        activate_stage_adapters(self.trainer.model, self.trainer.curriculum_state.frozen_adapters)

    def on_stage_end(self, args, state, control, stage: Stage, **kwargs):
        self.trainer.save_stage_adapter(stage_dir(args.output_dir, stage.index))
        metrics = kwargs.get("metrics") or {}
        self.trainer.stage_summaries.append(
            {
                "stage": stage.index,
                "levels": list(stage.levels),
                "rows": len(self.trainer.train_dataset),
                "lora_rank": stage.lora_rank,
                "lora_alpha": stage.lora_alpha,
                "trainable_params": self.trainer.curriculum_state.trainable_params,
                "steps": state.global_step - self.trainer.curriculum_state.stage_start_step,
                "train_loss": metrics.get("train_loss"),
                "train_runtime": time.perf_counter() - self._stage_start_time,
            }
        )


class CurriculumProgressCallback(ProgressCallback):
    """A [`~transformers.trainer_callback.ProgressCallback`] whose bar counts the current stage's steps."""

    def __init__(self, trainer: "CurriculumSFTTrainer", max_str_len: int = 100):
        super().__init__(max_str_len=max_str_len)
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is None:
            return
        start = self.trainer.curriculum_state.stage_start_step
        stage = self.trainer.stages[self.trainer.curriculum_state.stage]
        self.training_bar.reset(total=state.max_steps - start)
        self.training_bar.update(state.global_step - start)
        self.training_bar.set_description(
            f"Stage {stage.index + 1}/{len(self.trainer.stages)} (levels {','.join(map(str, stage.levels))}, "
            f"r={stage.lora_rank})"
        )
        self.current_step = state.global_step
