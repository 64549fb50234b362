"""Tiny models built from a config with random weights and a locally trained tokenizer.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in milliseconds on a few
sentences, the model a 2-layer Gemma 3 text model. Sizes are the smallest that
bitsandbytes' CPU 4-bit kernels accept: every linear layer has an input width that is a
multiple of the NF4 block size (64) and an output width that is a multiple of 32. Saved as an ordinary HF directory so the product loads it exactly as it would load any local model (``--model DIR``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from storage.files import publish_dir, staged_dir

CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris is the capital of France.",
    "Explain photosynthesis in simple words. Plants turn light, water and air into sugar.",
    "Write a short poem about the sea. The waves roll in and out again.",
    "Summarise the story of a fox and a crow. The fox flatters the crow and gets the cheese.",
    "def add(a, b): return a + b  # a small python function",
    "Good great happy kind short long yes no maybe always never the a an of to in is it.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    if chat:
        specials += ["<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model_dir(path: Path, chat: bool = False, seed: int = 0,
                        init_std: float = 0.02) -> Path:
    """Write a tiny random Gemma 3 text model + tokenizer to ``path`` and return it.

    ``init_std``: the std of the random weights (transformers' default 0.02).
    """
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_tokenizer(chat=chat)
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        sliding_window=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, tie_word_embeddings=True,
        initializer_range=init_std,
    )
    model = Gemma3ForCausalLM(cfg)
    if path.exists():
        shutil.rmtree(path)  # an incomplete leftover: callers reuse only complete ones
    with staged_dir(path.parent, f".{path.name}.") as tmp:  # a kill leaves no half model
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        publish_dir(tmp, path)
    return path
