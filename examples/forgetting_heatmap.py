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
Offline demo of the per-level evaluation: a tiny randomly initialised model trained on the synthetic leveled problems
(no hub, CPU, a few minutes), validation split from TRAIN, the forgetting matrix and its heatmap written to
`output_dir` (the README's example heatmap comes from this script with its defaults).

```bash
OMP_NUM_THREADS=1 python examples/forgetting_heatmap.py --output_dir out/heatmap_demo
OMP_NUM_THREADS=1 python examples/forgetting_heatmap.py --preset seq_no_replay --steps_per_stage 60
python -m trl_plrs.math.transitions out/heatmap_demo/stage_eval/after_stage-{1,5}/predictions.csv
```
"""

import argparse
import os

import torch
from peft import LoraConfig

from trl_plrs import CurriculumSFTTrainer, PLRSConfig
from trl_plrs.data import split_train_validation
from trl_plrs.forgetting import load_forgetting_matrix
from trl_plrs.math.data import make_synthetic_math, math_corpus, to_prompt_completion
from trl_plrs.testing import build_tiny_model, build_tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="out/forgetting_heatmap")
    parser.add_argument(
        "--preset", default="replay_shrink_no_final", help="One of the six baselines (trl_plrs.PRESETS)."
    )
    parser.add_argument("--rows_per_level", type=int, default=120)
    parser.add_argument("--steps_per_stage", type=int, default=80)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--eval_problems_per_level", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    problems = make_synthetic_math(num_per_level=args.rows_per_level, seed=args.seed)
    # Validation for selection and the matrix comes from TRAIN; a test split would be evaluated only after training.
    splits = split_train_validation(problems, validation_size=0.2, seed=args.seed)
    tokenizer = build_tokenizer(corpus=math_corpus(problems))
    training_args = PLRSConfig(
        output_dir=args.output_dir,
        plrs_preset=args.preset,
        lora_ranks=[32, 16, 8, 4, 4] if args.preset == "replay_shrink_no_final" else None,
        max_steps=args.steps_per_stage,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        warmup_steps=0.1,  # a float below 1 is a fraction of the steps
        logging_steps=20,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=args.seed,
        disable_tqdm=True,
        stage_eval_generate=True,
        stage_eval_max_problems_per_level=args.eval_problems_per_level,
        stage_eval_max_new_tokens=48,
        stage_eval_before_training=True,
        per_device_eval_batch_size=32,
    )
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, hidden_size=args.hidden_size, seed=args.seed),
        args=training_args,
        train_dataset=splits["train"].map(to_prompt_completion),
        eval_dataset=splits["validation"].map(to_prompt_completion),
        processing_class=tokenizer,
        peft_config=LoraConfig(target_modules="all-linear", lora_dropout=0.0),
    )
    trainer.train()
    matrix = load_forgetting_matrix(args.output_dir)
    for metric, summary in matrix.summary().items():
        print(f"{metric}: {summary}")
    print(f"Heatmap: {os.path.join(args.output_dir, 'forgetting_heatmap.png')}")


if __name__ == "__main__":
    main()
