"""Tiny random transformers models built here (nothing downloaded), for the `hf:PATH` tests: a Gemma 3
VLM and a Qwen2 causal LM with byte-level BPE tokenizers trained on the planner prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from prompts import load as load_prompt


def _tokenizer(special: list[str], chat_template: str, **tokens):
    """A byte-level BPE trained here on the planner prompt, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    prompt = load_prompt("hf_planner")
    corpus = [prompt["instructions"], prompt["user"], "pick up the red block So: open the drawer"] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **tokens)


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_vlm(out: Path) -> Path:
    """A random Gemma 3 VLM (SigLIP tower on 28-px images, 4 tokens an image, 2 text layers of width 32)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = _tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                      "<end_of_image>", "<image_soft_token>"], GEMMA_TEMPLATE,
                     bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                     extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                           "image_token": "<image_soft_token>"})
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                                tokenizer=tok, chat_template=GEMMA_TEMPLATE, image_seq_length=4)
    ids = tok.convert_tokens_to_ids
    cfg = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
                         sliding_window=128),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_lm(out: Path, initializer_range: float = 0.02) -> Path:
    """A random Qwen2 causal LM (2 layers of width 32) with a ChatML template. With transformers' default
    initializer_range its logits are nearly flat whatever LoRA does (RMSNorm bounds the hidden state
    and the embedding rows are tiny); a fine-tuning test raises it so the answer loss can move."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE,
                     eos_token="<|im_end|>", pad_token="<|endoftext|>")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=initializer_range)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
