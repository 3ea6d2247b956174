"""Instructions as tensors: the frameworks batch, split and ship tensors only, so a rollout stores each instruction as
zero-padded UTF-8 bytes and the forward pass decodes it back (shared by the RLinf, AReaL and siiRL adapters)."""

import torch

LANGUAGE_BYTES = 256  # width of a stored instruction


def encode_text(texts: list[str], width: int = LANGUAGE_BYTES) -> torch.Tensor:
    """B strings as a (B, width) uint8 tensor of zero-padded UTF-8; a longer string is an error that shows it."""
    out = torch.zeros(len(texts), width, dtype=torch.uint8)
    for i, text in enumerate(texts):
        data = text.encode("utf-8")
        if len(data) > width:
            raise ValueError(f"text longer than {width} bytes: {text!r}")
        out[i, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return out


def decode_text(data: torch.Tensor) -> list[str]:
    """The strings of `encode_text`'s tensor."""
    return [bytes(row[row != 0].tolist()).decode("utf-8") for row in data.cpu()]
