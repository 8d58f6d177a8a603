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
Tiny models and a locally trained tokenizer, so that tests and the offline demo never touch a model hub, and a
callback that kills its process at a chosen point, for resume tests.

>>> from trl_plrs.testing import build_tiny_model, build_tokenizer
>>> tokenizer = build_tokenizer()
>>> model = build_tiny_model(tokenizer, architecture="llama")
"""

import os
import signal
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .callbacks import CurriculumCallback


PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|im_end|>"
BOS_TOKEN = "<|im_start|>"
UNK_TOKEN = "<|unk|>"

# ChatML, as Qwen2 uses it. The generation markers let TRL compute an assistant-only loss mask too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DEFAULT_CORPUS = [
    "system user assistant Solve the problem. Put the final answer in \\boxed{}.",
    "What is 12 + 7? The answer is \\boxed{19}.",
    "Compute 3 * (4 - 1) = 9, so the answer is \\boxed{9}.",
    "Solve for x: 2x + 3 = 11. Subtract 3: 2x = 8, divide by 2: x = 4. \\boxed{4}",
    "Level 1 Level 2 Level 3 Level 4 Level 5 Algebra Prealgebra Number Theory Geometry",
    "A train travels 60 miles in 2 hours. Its speed is \\frac{60}{2} = 30 miles per hour. \\boxed{30}",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 +-*/=()[]{}^_.,;:!?$\\'\"",
]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """
    Train a small byte-level BPE tokenizer locally, with a ChatML chat template and a pad token.

    Digits are split one by one, so that a tiny model can learn arithmetic digit by digit.

    Args:
        corpus (`Iterable[str]`, *optional*):
            Texts to train on. Defaults to a few lines of math-flavoured English.
        vocab_size (`int`, *optional*, defaults to `512`):
            Size of the vocabulary, special tokens included.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer, with `pad_token`, `eos_token` and `chat_template` set.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special_tokens = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus) if corpus is not None else _DEFAULT_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=None,
        unk_token=UNK_TOKEN,
        model_max_length=2048,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    architecture: str = "llama",
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    head_dim: int = 16,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
) -> LlamaForCausalLM | Qwen2ForCausalLM:
    """
    Build a randomly initialised causal LM from config, sized for CPU tests.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerFast`]):
            Tokenizer whose vocabulary, pad and eos tokens the model uses.
        architecture (`str`, *optional*, defaults to `"llama"`):
            `"llama"` or `"qwen2"`. Both have the projections `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
            `up_proj` and `down_proj` that the paper's LoRA targets.
        hidden_size (`int`, *optional*, defaults to `64`):
            Width of the model; the MLP is twice as wide, with `hidden_size // head_dim` attention heads.
        num_hidden_layers (`int`, *optional*, defaults to `2`):
            Number of decoder layers.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Parameter dtype (`torch.float64` makes exactness checks tighter).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the weight initialisation.
        head_dim (`int`, *optional*, defaults to `16`):
            Width of an attention head (vLLM needs at least 32).
        intermediate_size (`int`, *optional*):
            Width of the MLP; defaults to twice `hidden_size`.
        num_key_value_heads (`int`, *optional*):
            Key/value heads; defaults to half the attention heads.
    """
    config_classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if architecture not in config_classes:
        raise ValueError(
            f"`architecture` must be one of {sorted(config_classes)}, but the value passed is {architecture!r}."
        )
    config_class, model_class = config_classes[architecture]
    num_heads = max(hidden_size // head_dim, 1)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads or max(num_heads // 2, 1),
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(
    output_dir: str, architecture: str = "llama", corpus: Iterable[str] | None = None, **kwargs
) -> str:
    """
    Build a tokenizer and a tiny model and save both to `output_dir`, so that they load by path like a hub model.

    Returns:
        `str`: `output_dir`.
    """
    tokenizer = build_tokenizer(corpus)
    model = build_tiny_model(tokenizer, architecture=architecture, **kwargs)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def kill_this_process() -> None:
    """Die at once with SIGKILL, as a preempted or OOM-killed job does: no handler, no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillSwitch(CurriculumCallback):
    """
    Kills its process ([`kill_this_process`]) at the end of step `kill_at_step` or as the stage of index
    `kill_after_transition_to` begins (after the transition), for tests that resume a killed curriculum.
    """

    def __init__(self, kill_at_step: int | None = None, kill_after_transition_to: int | None = None):
        self.kill_at_step = kill_at_step
        self.kill_after_transition_to = kill_after_transition_to

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.kill_at_step:
            kill_this_process()

    def on_stage_begin(self, args, state, control, stage, **kwargs):
        if stage.index == self.kill_after_transition_to:
            kill_this_process()
