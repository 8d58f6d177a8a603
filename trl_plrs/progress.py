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
"""What a person watching a curriculum sees: one labelled bar per stage and per evaluation, log lines led by the stage,
and one line per finished stage. [`CurriculumProgressCallback`] replaces the Trainer's `ProgressCallback`; it only
reads the trainer."""

import sys

from tqdm.auto import tqdm
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from .callbacks import CurriculumCallback
from .curriculum import Stage
from .transitions import stage_dir


def bars_render() -> bool:
    r"""
    Whether progress bars render where they are written: a terminal, or a notebook (tqdm's widget bar). Written to a
    file (`python train.py > train.log 2>&1`, a job scheduler's log), a bar is a run of `\r`-separated redraws, with
    cursor moves (`\x1b[A`) where bars nest, between the log lines, which already say how far training is; there the
    bars are off and the lines stay.
    """
    return "notebook" in tqdm.__module__ or sys.stderr.isatty()


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

    def __init__(self, trainer: Trainer, max_str_len: int = 100):
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
            disable=not bars_render(),
            desc=f"Stage {stage.number}/{len(self.trainer.stages)} (levels "
            f"{','.join(map(str, stage.levels))}{stage.rank_label})",
        )
        self.current_step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self._evaluation_bar is not None:  # inside `evaluation_bar()`: its one bar stands for every loop
            return
        if not state.is_world_process_zero or eval_dataloader is None:
            return
        if self.prediction_bar is None:
            self.prediction_bar = tqdm(
                total=len(eval_dataloader) if has_length(eval_dataloader) else None,  # a streamed set has no length
                desc="Evaluating",
                leave=False,
                dynamic_ncols=True,
                unit="batch",
                disable=not bars_render(),
            )
        self.prediction_bar.update(1)

    def evaluation_bar(self, description: str, total: int) -> "tqdm | None":
        """
        Open one labelled bar for an evaluation made of several loops (e.g. one per level); the Trainer's own
        prediction bars stay closed until [`close_evaluation_bar`]. `None` on other processes.
        """
        if self.trainer.is_world_process_zero():
            self._evaluation_bar = tqdm(
                total=total, desc=description, dynamic_ncols=True, unit="level", disable=not bars_render()
            )
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
        if summary is None or summary.stage != stage.number:
            return
        loss = summary.train_loss
        lora = self.trainer.stage_adapters is not None  # a fresh LoRA adapter per stage, saved at its end
        self.write(
            f"Stage {stage.number}/{len(self.trainer.stages)} done: levels {','.join(map(str, stage.levels))} "
            f"({summary.rows:,} rows with replay '{self.trainer.replay}'), "
            + (f"LoRA r={stage.lora_rank}, " if lora else "")
            + f"{summary.steps} step{'s' * (summary.steps != 1)} in {summary.train_runtime:.1f} s"
            + ("" if loss is None else f", train loss {loss:.4f}")
            + (f"; adapter saved to {stage_dir(args.output_dir, stage.number)}" if lora else "")
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._close_training_bar()
        if not self.trainer.stage_summaries:
            return
        done = f"Curriculum done ({len(self.trainer.stage_summaries)} stages): "
        if self.trainer.stage_adapters is not None:
            self.write(
                done + f"the combined adapter for the original base model is in {args.output_dir} "
                f"(PeftModel.from_pretrained(base, {args.output_dir!r}))."
            )
        else:
            self.write(done + f"the trained model is in {args.output_dir}, saved as `SFTTrainer` saves it.")

    def _close_training_bar(self) -> None:
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None
