"""A tiny Hugging Face style model directory, generated in pure Python.

The demo needs a model the stock frontend could load (``config.json``, a
byte-level BPE ``tokenizer.json``, ``tokenizer_config.json`` with a chat
template, ``generation_config.json``) without downloading anything or
needing the compiled ``tokenizers`` package. The vocabulary is the three
special tokens, the 256 byte-level symbols and a few merges that spell out
``hello world from the tiny model``; :class:`TinyDetokenizer` turns ids back
into text. The test suite uses this model too (the ``tiny_model`` fixture):
one generator, byte-identical output on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Ids fixed by the order above.
EOS_TOKEN_ID = 0
BOS_TOKEN_ID = 1
FILE_NAMES = ("tokenizer.json", "config.json", "tokenizer_config.json", "generation_config.json")
WORDS = ("hello", " world", " from", " the", " tiny", " model", " quick", " brown", " fox")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest
    to code points from 256 upwards, so every byte is one visible symbol."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _vocab_and_merges() -> tuple[dict[str, int], list[list[str]]]:
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(BYTE_TO_CHAR.values()):
        vocab[ch] = len(vocab)
    merges: list[list[str]] = []
    for word in WORDS:
        symbols = [BYTE_TO_CHAR[b] for b in word.encode()]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append([left, right])
            left = merged
    return vocab, merges


def tokenizer_json() -> dict[str, object]:
    vocab, merges = _vocab_and_merges()
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_tiny_model(directory: str | Path) -> Path:
    """Write the model files into ``directory`` (created if needed); returns it."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_json()
    vocab_size = len(tok["model"]["vocab"])  # type: ignore[index]
    files: dict[str, object] = {
        "tokenizer.json": tok,
        "config.json": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "max_position_embeddings": 4096,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "bos_token_id": BOS_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID,
        },
        "tokenizer_config.json": {
            "bos_token": "<|im_start|>",
            "eos_token": "<|endoftext|>",
            "model_max_length": 4096,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": CHAT_TEMPLATE,
        },
        "generation_config.json": {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID},
    }
    for name, content in files.items():
        (root / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    return root


class TinyDetokenizer:
    """Decode token ids of a byte-level BPE ``tokenizer.json`` (pure Python)."""

    def __init__(self, tokenizer_path: str | Path) -> None:
        data = json.loads(Path(tokenizer_path).read_text())
        vocab: dict[str, int] = data["model"]["vocab"]
        self._id_to_token = {i: t for t, i in vocab.items()}
        self._special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            if skip_special_tokens and i in self._special:
                continue
            token = self._id_to_token.get(i)
            if token is None:
                continue
            for ch in token:
                b = CHAR_TO_BYTE.get(ch)
                if b is None:
                    out += ch.encode()
                else:
                    out.append(b)
        return out.decode(errors="replace")

    def encode_words(self, text: str) -> list[int]:
        """Greedy longest-match encoding (enough for demo prompts)."""
        inv = {t: i for i, t in self._id_to_token.items()}
        symbols = "".join(BYTE_TO_CHAR[b] for b in text.encode())
        ids: list[int] = []
        pos = 0
        while pos < len(symbols):
            for end in range(len(symbols), pos, -1):
                if symbols[pos:end] in inv:
                    ids.append(inv[symbols[pos:end]])
                    pos = end
                    break
        return ids


def decode(model_dir: str | Path, ids: list[int], skip_special_tokens: bool = True) -> str:
    """The text of ``ids`` under the model in ``model_dir`` (what a frontend shows)."""
    detok = TinyDetokenizer(Path(model_dir) / "tokenizer.json")
    return detok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def encode(model_dir: str | Path, text: str) -> list[int]:
    """Token ids of ``text`` (greedy longest match; enough for test prompts)."""
    return TinyDetokenizer(Path(model_dir) / "tokenizer.json").encode_words(text)
