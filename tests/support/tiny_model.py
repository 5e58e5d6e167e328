"""A tiny, deterministic Hugging Face style model directory for tests.

Only the files a frontend needs to serve the model are produced: a byte-level BPE
``tokenizer.json`` plus the usual JSON configs. There are no weights; the workers
under test generate token ids themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
EOS_TOKEN_ID = 0
BOS_TOKEN_ID = 1
VOCAB_SIZE = 300
MAX_POSITION_EMBEDDINGS = 4096

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Fixed corpus so training always yields the same merges; repeated phrases make
# the common words of the test prompts into single tokens.
CORPUS: tuple[str, ...] = (
    "hello world from the tiny model",
    "hello world",
    "Hello, world!",
    "the tiny model says hello to the world",
    "user assistant system",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "one two three four five six seven eight nine ten",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
) * 8

FILE_NAMES: tuple[str, ...] = (
    "tokenizer.json",
    "config.json",
    "tokenizer_config.json",
    "generation_config.json",
)


def _train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(CORPUS), trainer=trainer)
    return tokenizer


def _model_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
    }


def _tokenizer_config() -> dict[str, Any]:
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": IM_START,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _generation_config() -> dict[str, Any]:
    return {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Sorted keys and a trailing newline keep the bytes identical across runs.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(dir: Path) -> Path:
    """Write the tiny model into ``dir`` (created if needed) and return it."""
    dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    (dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    _write_json(dir / "config.json", _model_config(tokenizer.get_vocab_size()))
    _write_json(dir / "tokenizer_config.json", _tokenizer_config())
    _write_json(dir / "generation_config.json", _generation_config())
    return dir


def load_tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def encode(model_dir: Path, text: str) -> list[int]:
    return list(load_tokenizer(model_dir).encode(text, add_special_tokens=False).ids)


def decode(model_dir: Path, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return str(load_tokenizer(model_dir).decode(list(ids), skip_special_tokens=skip_special_tokens))
