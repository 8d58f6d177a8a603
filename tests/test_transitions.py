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
"""The transitions on their own: the choice of `adapter_transition`, and `StageAdapters` carrying a tiny model's
adapters through a curriculum's stages without a Trainer."""

import os

import pytest
import torch
from peft import get_peft_model

from trl_plrs import transitions
from trl_plrs.adapters import DEFAULT_ADAPTER, FROZEN_ADAPTER, concatenate_lora_adapters, lora_layers
from trl_plrs.curriculum import Stage
from trl_plrs.testing import build_tiny_model, build_tokenizer
from trl_plrs.transitions import (
    StageAdapters,
    choose_adapter_transition,
    fp32_copy_bytes,
    fp32_copy_fits,
    free_device_memory,
    stage_dir,
)

from .test_adapters import logits, lora_config, randomize_adapter


def test_choose_adapter_transition():
    fp32, bf16, fp16 = {torch.float32}, {torch.bfloat16}, {torch.float16}

    def auto(dtypes, quantized=False, engine=None, autocast=False, fits=True):
        return choose_adapter_transition("auto", dtypes, quantized, engine, autocast, fits)

    assert auto(fp32) == auto(fp32, autocast=True) == auto(fp32, engine="DeepSpeed") == "merge"
    # 16-bit weights under autocast: upcast the targeted weights, then merge exactly.
    assert auto(bf16, autocast=True) == auto(fp16, autocast=True) == "fp32_merge"
    # 16-bit weights without autocast could not run an fp32 weight: keep the finished adapters instead.
    assert auto(bf16) == auto(fp16) == auto({torch.float32, torch.bfloat16}) == "stack"
    assert auto(fp32, quantized=True) == auto(bf16, quantized=True, autocast=True) == "stack"
    # DeepSpeed with bf16/fp16 casts the weights to 16 bits; no engine lets them be upcast.
    assert auto(fp32, engine="DeepSpeed", autocast=True) == auto(bf16, engine="DeepSpeed", autocast=True) == "stack"
    assert auto(bf16, engine="FSDP", autocast=True) == "stack"
    # FSDP2 keeps fp32 weights in fp32 under bf16 (only each gathered copy is cast): a merge stays exact.
    assert auto(fp32, engine="FSDP", autocast=True) == "merge"
    # An fp32 copy that would not fit: the fused stack, which needs no extra memory.
    assert auto(bf16, autocast=True, fits=False) == "stack"
    assert auto(fp32, fits=False) == "merge"  # nothing to copy
    for requested in ("merge", "fp32_merge", "stack"):
        assert choose_adapter_transition(requested, bf16, False, False, False) == requested


def test_fp32_copy_fits_a_share_of_free_memory():
    gib = 2**30
    assert fp32_copy_fits(2 * gib, 8 * gib) and not fp32_copy_fits(3 * gib, 8 * gib)
    assert fp32_copy_fits(2 * gib, None)  # free memory unknown: the faster choice
    assert fp32_copy_fits(3 * gib, 8 * gib, max_share=0.5)
    # 2 more bytes per targeted 16-bit weight; fp32 weights need no copy.
    model = get_peft_model(build_tiny_model(build_tokenizer(), dtype=torch.bfloat16), lora_config(8))
    targeted = sum(layer.get_base_layer().weight.numel() for layer in lora_layers(model))
    assert fp32_copy_bytes(model) == 2 * targeted > 0
    assert fp32_copy_bytes(get_peft_model(build_tiny_model(build_tokenizer()), lora_config(8))) == 0
    assert free_device_memory(torch.device("cpu")) > 0


def test_auto_stacks_when_the_fp32_copy_would_not_fit(tmp_path, tokenizer, caplog, monkeypatch):
    """A bf16 base under autocast upcasts (fp32_merge) while the copy fits, and fuses the stack when it would not."""
    import logging

    from trl_plrs import CurriculumSFTTrainer

    from .conftest import make_leveled_dataset
    from .test_plrs_trainer import lora_config as trainer_lora_config
    from .test_plrs_trainer import make_args

    def build(free_bytes):
        monkeypatch.setattr(transitions, "free_device_memory", lambda device: free_bytes)
        with caplog.at_level(logging.INFO, logger="trl_plrs.transitions"):
            return CurriculumSFTTrainer(
                build_tiny_model(tokenizer, dtype=torch.bfloat16),
                args=make_args(tmp_path, bf16=True),
                train_dataset=make_leveled_dataset(),
                processing_class=tokenizer,
                peft_config=trainer_lora_config(),
            )

    roomy = build(free_bytes=2**40)
    assert roomy.adapter_transition == "fp32_merge"
    copy_bytes = fp32_copy_bytes(roomy.model)
    assert "within 25% of the 1024.00 GiB free" in caplog.text
    caplog.clear()
    tight = build(free_bytes=2 * copy_bytes)
    assert tight.adapter_transition == "stack"
    assert "over 25% of the" in caplog.text and "fused into one frozen adapter" in caplog.text


# --------------------------------------------------------------------------------------------------------------------
# StageAdapters on a tiny model, without a Trainer

STAGES = [Stage(0, (1,), 16, 32.0), Stage(1, (2,), 8, 16.0), Stage(2, (3,), 4, 8.0)]


def run_stages(tokenizer, transition, output_dir, dtype=torch.float64):
    """Train (randomize) each stage's adapter, save it, and advance: what the trainer does between its stages."""
    model = get_peft_model(build_tiny_model(tokenizer, dtype=dtype), lora_config(16, lora_dropout=0.1))
    adapters = StageAdapters(model, transition, lora_config(16, lora_dropout=0.1), False, autocast_adapter_dtype=True)
    for stage in STAGES:
        if stage.index:
            adapters.advance(STAGES[stage.index - 1], stage)
        assert adapters.stage_index == stage.index
        randomize_adapter(model, seed=stage.index + 40)
        model.save_pretrained(stage_dir(output_dir, stage.number), selected_adapters=[DEFAULT_ADAPTER])
    return model, adapters


@pytest.mark.parametrize("transition", ["merge", "stack"])
def test_stage_adapters_carry_every_stage_and_install_the_export(tokenizer, tmp_path, transition):
    batch = tokenizer(["What is 3 + 4?", "Solve 2x = 8 for x."], return_tensors="pt", padding=True)
    original = logits(build_tiny_model(tokenizer, dtype=torch.float64), batch)
    model, adapters = run_stages(tokenizer, transition, str(tmp_path))
    live = logits(model, batch)
    assert not torch.allclose(live, original, atol=1e-3)
    # One trainable adapter of the last stage's rank, and in stack mode one frozen adapter of the others' summed rank.
    assert adapters.frozen == ([FROZEN_ADAPTER] if transition == "stack" else [])
    for layer in lora_layers(model):
        assert layer.r[DEFAULT_ADAPTER] == 4
        assert layer.r.get(FROZEN_ADAPTER) == (24 if transition == "stack" else None)

    # The end: the combined adapter alone, the model's function unchanged, the base as it began (merge undone).
    concatenate_lora_adapters([stage_dir(str(tmp_path), stage.number) for stage in STAGES], str(tmp_path))
    adapters.install_combined(str(tmp_path))
    assert list(model.peft_config) == [DEFAULT_ADAPTER] and model.peft_config[DEFAULT_ADAPTER].r == 28
    torch.testing.assert_close(logits(model, batch), live, atol=1e-10, rtol=0)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), original, atol=1e-10, rtol=0)


@pytest.mark.parametrize("transition", ["merge", "stack"])
def test_stage_adapters_restore_rebuilds_the_finished_stages(tokenizer, tmp_path, transition):
    """A resume at stage 3 rebuilds stages 1-2 from their folders: the same model as the run that went through."""
    model, _ = run_stages(tokenizer, transition, str(tmp_path))
    resumed_model = get_peft_model(build_tiny_model(tokenizer, dtype=torch.float64), lora_config(16))
    resumed = StageAdapters(resumed_model, transition, lora_config(16), False, autocast_adapter_dtype=True)
    resumed.restore(STAGES, str(tmp_path), stage_index=2)
    assert resumed.stage_index == 2 and resumed.frozen == ([FROZEN_ADAPTER] if transition == "stack" else [])
    resumed_model.load_adapter(stage_dir(str(tmp_path), 3), adapter_name=DEFAULT_ADAPTER, is_trainable=True)
    resumed.activate()
    expected = dict(model.named_parameters())
    for name, param in resumed_model.named_parameters():
        assert torch.equal(param, expected[name]), name
    with pytest.raises(ValueError, match="adapter of finished stage 1 is missing"):
        StageAdapters(
            get_peft_model(build_tiny_model(tokenizer), lora_config(16)), transition, lora_config(16), False, True
        ).restore(STAGES, str(tmp_path / "elsewhere"), stage_index=1)


def test_fp32_merge_upcasts_once_and_install_restores_the_dtype(tokenizer, tmp_path):
    model, adapters = run_stages(tokenizer, "fp32_merge", str(tmp_path), dtype=torch.bfloat16)
    assert {layer.get_base_layer().weight.dtype for layer in lora_layers(model)} == {torch.float32}
    concatenate_lora_adapters([stage_dir(str(tmp_path), stage.number) for stage in STAGES], str(tmp_path))
    adapters.install_combined(str(tmp_path))
    assert {layer.get_base_layer().weight.dtype for layer in lora_layers(model)} == {torch.bfloat16}


def test_activate_drops_the_per_stage_adapters_of_an_older_checkpoint(tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    adapters = StageAdapters(model, "stack", lora_config(16), False, autocast_adapter_dtype=True)
    adapters.advance(STAGES[0], STAGES[1])
    model.add_adapter("stage_1", lora_config(16))  # as a checkpoint written before fusion would load it
    adapters.activate()
    assert sorted(model.peft_config) == [DEFAULT_ADAPTER, FROZEN_ADAPTER]
    assert model.active_adapters == [DEFAULT_ADAPTER, FROZEN_ADAPTER]
    assert os.path.basename(stage_dir("out", 3)) == "stage-3"
