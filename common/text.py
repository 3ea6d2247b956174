"""Offline tokenizers for language instructions (no hub access).

Both tokenizers are `transformers.PreTrainedTokenizerFast` objects wrapping a `tokenizers.Tokenizer`, so they share
one interface (`tok(texts, padding=..., max_length=...)`, `decode`, `pad_token_id`, `len(tok)`, `save_pretrained`) and
a method can swap in a real checkpoint's tokenizer with `load_tokenizer`. Like the Llama/Gemma tokenizers used by
OpenVLA and PaliGemma, encoding prepends `<bos>` and adds no `<eos>`; padding is on the right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _wrap(tokenizer: Tokenizer) -> transformers.PreTrainedTokenizerFast:
    """Byte-level decoding, `<bos>` prepended, right padding: the shared setup of both tokenizers."""
    tokenizer.decoder = decoders.ByteLevel()
    bos_id = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="right", clean_up_tokenization_spaces=False,
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512,
                        out_dir: str | Path | None = None) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, Radford et al. 2019) on `texts` with the `tokenizers` library.

    Ids 0-3 are `<pad> <bos> <eos> <unk>`, then the 256 byte symbols, then the learned merges (up to `vocab_size` in
    all; fewer if the corpus runs out of pairs). Any UTF-8 text encodes without `<unk>`. Saved with
    `save_pretrained(out_dir)` when `out_dir` is given (reload with `load_tokenizer`).
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = _wrap(tokenizer)
    if out_dir is not None:
        wrapped.save_pretrained(out_dir)
    return wrapped


def byte_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Tokenizer with no training: UTF-8 byte b -> id b (0-255), then `<pad> <bos> <eos> <unk>` = 256-259 (ByT5-like).

    Built as a byte-level BPE with no merges: the byte-level pre-tokenizer maps each byte to one printable symbol and
    the vocabulary maps that symbol back to the byte's value.
    """
    byte_symbol = bytes_to_unicode()
    vocab = {byte_symbol[b]: b for b in range(256)}
    vocab.update({token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return _wrap(tokenizer)


def load_tokenizer(path: str | Path) -> transformers.PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained` (ours, or a checkpoint's) from a local directory, never the hub."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenize(tokenizer: transformers.PreTrainedTokenizerBase, texts: str | Iterable[str],
             max_length: int) -> dict[str, torch.Tensor]:
    """Encode `texts` to `input_ids` (LongTensor, B x max_length) and `attention_mask` (BoolTensor, True = real token),
    padded on the tokenizer's side (right for ours) and truncated to `max_length`."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].bool()}


def tokenizer_to_json(tokenizer: transformers.PreTrainedTokenizerFast) -> str:
    """The whole tokenizer (vocabulary, merges, pre/post-processing) as one JSON string, e.g. to store it inside a
    checkpoint's config.json so the checkpoint directory is self-contained."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(blob: str) -> transformers.PreTrainedTokenizerFast:
    """Inverse of `tokenizer_to_json` for tokenizers built by this module."""
    return _wrap(Tokenizer.from_str(blob))
