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
A 3-stage curriculum on a tiny model that can kill itself with SIGKILL at a chosen point, for the resume tests.

    python tests/scripts/curriculum_worker.py --output_dir out --adapter_transition merge --kill_at_step 2
    python tests/scripts/curriculum_worker.py --output_dir out --adapter_transition merge --resume
"""

import argparse

import torch
from peft import LoraConfig

from trl_plrs import CurriculumSFTTrainer, PLRSConfig
from trl_plrs.testing import KillSwitch, build_tiny_model, build_tokenizer, kill_this_process


class TornCheckpointTrainer(CurriculumSFTTrainer):
    """Dies in the middle of writing the checkpoint of step `kill_while_saving_step` (model written, state not)."""

    kill_while_saving_step = None

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == self.kill_while_saving_step:
            kill_this_process()
        super()._save_optimizer_and_scheduler(output_dir)


def leveled_rows(levels=(1, 2, 3), rows_per_level=8):
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + {3 * level + i}?"}],
            "completion": [{"role": "assistant", "content": f"\\boxed{{{4 * level + 2 * i}}}"}],
            "level": level,
        }
        for level in levels
        for i in range(rows_per_level)
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--adapter_transition", default="merge")
    parser.add_argument("--kill_at_step", type=int)
    parser.add_argument("--kill_after_transition_to", type=int)
    parser.add_argument("--kill_while_saving_step", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lora_ranks", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--per_device_train_batch_size", type=int, default=4, help="3: stages end mid-epoch.")
    parser.add_argument(
        "--early_stopping", action="store_true", help="Evaluate every step; each stage stops early at its 2nd step."
    )
    cli = parser.parse_args()

    from datasets import Dataset

    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    args = PLRSConfig(
        output_dir=cli.output_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=cli.per_device_train_batch_size,
        max_steps=4,
        warmup_steps=1,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        seed=11,
        lora_ranks=cli.lora_ranks,
        replay=0.5,
        adapter_transition=cli.adapter_transition,
        **(
            # `greater_is_better=True` on the loss: every evaluation after a stage's first is "worse", so patience 1
            # stops each stage at its 2nd step and loads its best checkpoint.
            dict(
                eval_strategy="steps",
                eval_steps=1,
                load_best_model_at_end=True,
                early_stopping_patience=1,
                metric_for_best_model="loss",
                greater_is_better=True,
            )
            if cli.early_stopping
            else {}
        ),
    )
    TornCheckpointTrainer.kill_while_saving_step = cli.kill_while_saving_step
    trainer = TornCheckpointTrainer(
        build_tiny_model(tokenizer, seed=5),
        args=args,
        train_dataset=Dataset.from_list(leveled_rows()),
        eval_dataset=Dataset.from_list(leveled_rows(rows_per_level=2)) if cli.early_stopping else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.1),
        callbacks=[KillSwitch(cli.kill_at_step, cli.kill_after_transition_to)],
    )
    trainer.train(resume_from_checkpoint=True if cli.resume else None)


if __name__ == "__main__":
    main()
