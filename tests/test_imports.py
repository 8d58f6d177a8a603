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
"""The curriculum trainer needs neither math-verify nor matplotlib nor the MATH code: `import trl_plrs` loads none of
them, and a curriculum trains in a Python where math-verify and matplotlib cannot be imported."""

import os
import subprocess
import sys
import textwrap


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_import_loads_no_optional_dependency():
    result = run_python(
        """
        import sys
        import trl_plrs
        from trl_plrs import CurriculumSFTTrainer, PLRSConfig, split_train_validation
        print(sorted(name for name in ("math_verify", "matplotlib", "trl_plrs.math") if name in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_curriculum_trains_without_math_verify_and_matplotlib(tmp_path):
    result = run_python(
        f"""
        import sys
        sys.modules["math_verify"] = None  # `import math_verify` now raises ImportError, as when it is not installed
        sys.modules["matplotlib"] = None
        from datasets import Dataset
        from peft import LoraConfig
        from trl_plrs import CurriculumSFTTrainer, PLRSConfig
        from trl_plrs.testing import build_tiny_model, build_tokenizer

        tokenizer = build_tokenizer()
        rows = [{{"prompt": f"q {{i}}", "completion": " a" * (1 + i % 5), "level": 1 + i % 2}} for i in range(16)]
        args = PLRSConfig(output_dir={str(tmp_path)!r}, max_steps=1, report_to="none", use_cpu=True, lora_ranks=[8, 4],
                          disable_tqdm=True, stage_eval_per_level=False)
        trainer = CurriculumSFTTrainer(build_tiny_model(tokenizer), args=args, train_dataset=Dataset.from_list(rows),
                                       processing_class=tokenizer, peft_config=LoraConfig(target_modules="all-linear"))
        trainer.train()
        print("stages", len(trainer.stage_summaries))

        # MATH helpers: strict grading works, symbolic grading says what to install.
        from trl_plrs.math import is_equiv
        print("strict", is_equiv("\\\\dfrac{{1}}{{2}}", "0.5", mode="strict"))
        try:
            is_equiv("x^2+1", "1+x^2", mode="symbolic")  # needs math-verify (two numbers would not)
        except ImportError as error:
            print("symbolic", error)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "stages 2" in lines and "strict True" in lines
    assert any(line.startswith("symbolic") and "pip install trl_plrs[math]" in line for line in lines)


def test_import_prints_no_notice_of_optional_dependencies():
    """bitsandbytes' missing-`kernels` notice and DeepSpeed's 'Setting accelerator to CPU' are filtered by message on
    their own loggers; a warning of theirs about something else still shows."""
    result = run_python(
        """
        import logging
        import trl_plrs
        import deepspeed  # as TRL imports it, to check whether a model is wrapped
        from deepspeed.accelerator import get_accelerator

        get_accelerator()
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another bitsandbytes warning")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gemm_4bit_forward" not in result.stderr and "Setting accelerator to CPU" not in result.stderr
    assert "another bitsandbytes warning" in result.stderr
