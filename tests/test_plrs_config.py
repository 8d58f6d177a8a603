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

import pytest
from trl import TrlParser

from trl_plrs import PLRSConfig


def make_config(**kwargs):
    return PLRSConfig(**{"output_dir": "out", "use_cpu": True, "bf16": False, "report_to": "none", **kwargs})


def test_defaults():
    config = make_config()
    assert config.curriculum_column == "level"
    assert config.curriculum_stages is None
    assert config.replay is None  # resolved to the preset's value, or "full", by the trainer
    assert config.lora_ranks is None
    assert config.lora_alpha_ratio is None  # 2.0 with a preset, else the peft_config's lora_alpha / r
    assert config.adapter_transition == "auto"
    assert config.drop_unknown_levels is True


def test_command_line_parsing():
    parser = TrlParser(PLRSConfig)
    (config,) = parser.parse_args_and_config(
        [
            "--output_dir",
            "out",
            "--use_cpu",
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--curriculum_stages",
            "1,2",
            "3",
            "4,5",
            "--lora_ranks",
            "64",
            "32",
            "16",
            "--replay",
            "0.1",
            "--adapter_transition",
            "stack",
            "--plrs_preset",
            "replay_shrink",
        ]
    )
    assert config.curriculum_stages == [[1, 2], [3], [4, 5]]
    assert config.lora_ranks == [64, 32, 16]
    assert config.replay == 0.1
    assert config.adapter_transition == "stack"
    assert config.plrs_preset == "replay_shrink"


def test_python_values():
    config = make_config(curriculum_stages=[[1, 2], [3]], lora_ranks=32, replay="full")
    assert config.curriculum_stages == [[1, 2], [3]]
    assert config.lora_ranks == [32]
    assert config.replay == "full"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"plrs_preset": "b5"}, "`plrs_preset` must be one of .* but the value passed is 'b5'"),
        ({"adapter_transition": "swap"}, "`adapter_transition` must be one of .* but the value passed is 'swap'"),
        ({"lora_alpha_ratio": 0.0}, "`lora_alpha_ratio` must be a positive number, but the value passed is 0.0"),
        ({"lora_alpha_ratio": -2.0}, "`lora_alpha_ratio` must be a positive number"),
        ({"lora_alpha_ratio": "two"}, "`lora_alpha_ratio` must be a positive number, but the value passed is 'two'"),
        (
            {"replay": "half"},
            "`replay` must be 'none', 'full' or a fraction in \\(0, 1\\], but the value passed is 'half'",
        ),
        ({"replay": 1.5}, "`replay` must be 'none', 'full' or a fraction"),
        ({"lora_ranks": [64, 0]}, "`lora_ranks` must hold positive integers"),
        ({"curriculum_stages": [[1], [1, 2]]}, "`curriculum_stages` names a level in more than one stage"),
    ],
)
def test_invalid_values_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_alpha_ratio_from_yaml_string_is_a_number():
    assert make_config(lora_alpha_ratio="2").lora_alpha_ratio == 2.0


def test_bf16_follows_the_hardware_when_unset():
    from transformers.utils import is_torch_bf16_gpu_available

    # As the README's example builds it: no precision flag, no `use_cpu`. On a CPU machine: fp32, no error.
    config = PLRSConfig(output_dir="out", plrs_preset="replay_shrink", report_to="none")
    assert config.bf16 is is_torch_bf16_gpu_available()
    assert PLRSConfig(output_dir="out", report_to="none", use_cpu=True, bf16=True).bf16 is True


def test_construction_gives_no_warning_a_user_has_to_ask_about():
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PLRSConfig(output_dir="out", plrs_preset="replay_shrink", report_to="none")
    assert [str(warning.message) for warning in caught] == []
    # TRL's default gradient checkpointing is kept, under transformers' new name where it exists.
    assert config.gradient_checkpointing is True
    assert getattr(config, "activation_checkpointing", True) is True
    # Pinned memory only serves an accelerator; torch warns at every stage's dataloader without one.
    assert config.dataloader_pin_memory is torch.accelerator.is_available()
