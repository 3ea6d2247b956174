import pytest
import torch

from common.text import SPECIAL_TOKENS, byte_tokenizer, load_tokenizer, tokenize, train_bpe_tokenizer

torch.set_num_threads(1)

CORPUS = [
    f"{verb} the {color} {thing} {where}"
    for verb in ("pick up", "push", "open", "close", "put down")
    for color in ("red", "green", "blue", "yellow")
    for thing in ("block", "drawer", "door", "mug")
    for where in ("on the table", "to the left", "next to the bowl")
]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def test_bpe_vocab_and_merges(bpe):
    assert [bpe.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert bpe.pad_token_id == 0 and bpe.bos_token_id == 1
    assert 4 + 256 < len(bpe) <= 300  # specials + byte alphabet + learned merges
    ids = bpe("pick up the red block")["input_ids"]
    assert ids[0] == bpe.bos_token_id
    assert len(ids) - 1 < len("pick up the red block")  # merges compress the in-domain text


@pytest.mark.parametrize("text", ["pick up the red block on the table", "Öffne die Schublade, bitte! 把杯子放下"])
def test_bpe_round_trip(bpe, text):
    ids = bpe(text)["input_ids"]
    assert bpe.unk_token_id not in ids  # byte-level: unseen characters still encode
    assert bpe.decode(ids, skip_special_tokens=True) == text


def test_tokenize_pads_right_and_truncates(bpe):
    long_text = "open the green drawer next to the bowl"
    batch = tokenize(bpe, ["push the mug", long_text], max_length=12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (2, 12)
    n_short = len(bpe("push the mug")["input_ids"])
    assert n_short < 12 < len(bpe(long_text)["input_ids"])
    assert mask[0].tolist() == [True] * n_short + [False] * (12 - n_short)
    assert (ids[0, n_short:] == bpe.pad_token_id).all() and (ids[0, :n_short] != bpe.pad_token_id).all()
    assert mask[1].all()  # the long instruction is truncated to max_length
    assert ids[1].tolist() == bpe(long_text)["input_ids"][:12]


def test_save_and_load_tokenizer_round_trip(tmp_path):
    saved = train_bpe_tokenizer(CORPUS, vocab_size=300, out_dir=tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    texts = ["close the yellow door to the left", "put down the blue mug"]
    a, b = tokenize(saved, texts, 16), tokenize(loaded, texts, 16)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert loaded.pad_token_id == saved.pad_token_id and len(loaded) == len(saved)


def test_load_tokenizer_missing_dir_names_it(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(missing)


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = byte_tokenizer()
    assert len(tok) == tok.vocab_size == 260
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [256, 257, 258, 259]
    text = "grüne Tasse → 杯子"
    ids = tok(text)["input_ids"]
    assert ids == [tok.bos_token_id] + list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_byte_tokenizer_padding_and_save_load(tmp_path):
    tok = byte_tokenizer()
    batch = tokenize(tok, ["ab", "ümlaut"], max_length=6)
    assert batch["input_ids"][0].tolist() == [257, 97, 98, 256, 256, 256]
    assert batch["attention_mask"][0].tolist() == [True, True, True, False, False, False]
    assert batch["attention_mask"][1].all()  # "ümlaut" is 7 bytes + <bos>: truncated to 6
    tok.save_pretrained(tmp_path)
    assert torch.equal(tokenize(load_tokenizer(tmp_path), ["ab", "ümlaut"], 6)["input_ids"], batch["input_ids"])
