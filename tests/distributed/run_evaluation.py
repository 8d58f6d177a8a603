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
Worker of `tests/test_distributed.py`: `evaluate_math` on synthetic MATH-like rows with a tiny saved model, run alone
(`python`) or under `accelerate launch --num_processes 2`. Writes the report each process returned to
`<output_dir>/report-rank<k>.json`, and which rows it generated.
"""

import argparse
import json
import os

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl_plrs.math.evaluation as evaluation
from trl_plrs.math.data import make_synthetic_math


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()

    # Without a GPU, `cpu=True` is what makes the launched processes join one gloo group.
    state = PartialState(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(args.base_dir)
    model = AutoModelForCausalLM.from_pretrained(args.base_dir, dtype=torch.float32)
    generated = []
    generate = evaluation.generate_completions

    def recording_generate(model, tokenizer, problems, *rest):
        generated.extend(problems)
        return generate(model, tokenizer, problems, *rest)

    evaluation.generate_completions = recording_generate
    report = evaluation.evaluate_math(
        model,
        tokenizer,
        make_synthetic_math(3, seed=5),  # 15 problems of varied lengths
        batch_size=2,
        max_new_tokens=6,
        output_dir=os.path.join(args.output_dir, "eval"),
        show_progress=False,
    )
    with open(os.path.join(args.output_dir, f"report-rank{state.process_index}.json"), "w") as file:
        json.dump({"report": report, "generated": generated, "num_processes": state.num_processes}, file)


if __name__ == "__main__":
    main()
