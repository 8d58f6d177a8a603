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
Quantized (QLoRA) bases: recognising them, and keeping bitsandbytes' 4-bit layers trainable on CPU.
"""

from torch import nn


def is_quantized(model: str | nn.Module, model_init_kwargs: dict | None, quantization_config) -> bool:
    """Whether the base is (or, given by name, will be loaded) 4-bit or 8-bit."""
    if isinstance(model, str):
        return quantization_config is not None or "quantization_config" in (model_init_kwargs or {})
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_weights_trainable_on_cpu(model: nn.Module) -> int:
    """
    Stop bitsandbytes from repacking 4-bit weights for CPU inference. Returns the number of layers changed.

    On a CPU with AVX512-BF16, the first forward of a `Linear4bit` in eval mode without gradients (as the per-level
    evaluation between training steps does) repacks its weight into an inference-only layout for a fused kernel
    (bitsandbytes >= 0.49, PR bitsandbytes-foundation/bitsandbytes#1804); that kernel has no backward, so later
    training steps compute wrong LoRA gradients while the loss still decreases (the only sign is a UserWarning
    "gemv_4bit: an autograd kernel was not registered"). The layer's `support_avx512bf16_for_cpu` switch turns the
    repacking off. No upstream issue reports the training case as of bitsandbytes 0.50.2. On a GPU this does nothing.

    Raises:
        ValueError: if a layer was already repacked (the model was evaluated before the trainer was built).
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    changed = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit) or module.weight.device.type != "cpu":
            continue
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            raise ValueError(
                f"The 4-bit layer {name!r} was already repacked by bitsandbytes for CPU inference (an eval-mode "
                "forward without gradients ran before the trainer was built), and repacked weights have no backward. "
                "Load the quantized model again and build the trainer before evaluating it."
            )
        module.support_avx512bf16_for_cpu = False
        changed += 1
    return changed
