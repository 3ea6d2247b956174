import pytest

from adapters.text import LANGUAGE_BYTES, decode_text, encode_text


def test_instructions_survive_the_byte_encoding():
    texts = ["open the drawer", "pick up the café mug", "öffne die Schublade", ""]
    encoded = encode_text(texts)
    assert encoded.shape == (4, LANGUAGE_BYTES) and encoded.dtype.is_floating_point is False
    assert decode_text(encoded) == texts
    assert decode_text(encode_text(["task1_trial1"], 50)) == ["task1_trial1"]
    with pytest.raises(ValueError, match="longer than"):
        encode_text(["x" * (LANGUAGE_BYTES + 1)])
