"""lz-string `decompressFromBase64` with an output cap.

The PyPI `lzstring` package has no cap, and lz-string output can grow quadratically with its input,
so a 2 MiB body could expand to gigabytes. This follows the reference algorithm (pieroxy/lz-string)
but stops as soon as the output passes `max_chars`, which also bounds the dictionary's memory.
"""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_VALUES = {c: i for i, c in enumerate(_ALPHABET)}


class Lz64Error(ValueError):
    """The input is not valid lz-string base64."""


class Lz64TooLarge(ValueError):
    """The output would exceed the cap."""


class _BitReader:
    """Reads bits LSB-first from 6-bit base64 symbols, as lz-string's `getNextValue` does."""

    __slots__ = ("_index", "_position", "_text", "_value")

    def __init__(self, text: str) -> None:
        self._text = text
        self._index = 1
        self._position = 32
        self._value = self._symbol(0)

    def _symbol(self, index: int) -> int:
        try:
            return _VALUES[self._text[index]]
        except (KeyError, IndexError) as exc:
            raise Lz64Error("invalid lz64 data") from exc

    def exhausted(self) -> bool:
        return self._index > len(self._text)

    def read(self, count: int) -> int:
        bits = 0
        for shift in range(count):
            if self._value & self._position:
                bits |= 1 << shift
            self._position >>= 1
            if self._position == 0:
                self._position = 32
                self._value = self._symbol(self._index) if self._index < len(self._text) else 0
                self._index += 1
        return bits


def decompress_from_base64(text: str, max_chars: int) -> str:
    """Decode lz-string base64 into text of at most `max_chars` UTF-16 code units."""
    if not text:
        raise Lz64Error("empty lz64 data")
    reader = _BitReader(text)
    dictionary: list[str] = ["", "", ""]
    literal = reader.read(2)
    if literal == 2:
        return ""
    if literal not in (0, 1):
        raise Lz64Error("invalid lz64 data")
    first = chr(reader.read(8 if literal == 0 else 16))
    dictionary.append(first)
    word = first
    out = [first]
    size = 1
    num_bits = 3
    enlarge_in = 4
    while True:
        if reader.exhausted():
            raise Lz64Error("truncated lz64 data")
        code = reader.read(num_bits)
        if code in (0, 1):
            dictionary.append(chr(reader.read(8 if code == 0 else 16)))
            code = len(dictionary) - 1
            enlarge_in -= 1
        elif code == 2:
            return "".join(out)
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = word + word[0]
        else:
            raise Lz64Error("invalid lz64 data")
        size += len(entry)
        if size > max_chars:
            raise Lz64TooLarge(f"lz64 output exceeds {max_chars} characters")
        out.append(entry)
        dictionary.append(word + entry[0])
        enlarge_in -= 1
        word = entry
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1
