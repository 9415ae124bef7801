"""Payload decoding: every encoding PostHog SDKs use, and the limits that stop bombs."""

from __future__ import annotations

import base64
import gzip
from urllib.parse import quote

import lzstring
import orjson
import pytest

from gateway.capture.decode import DecodeLimits, decode_payload
from gateway.capture.errors import EmptyPayload, RequestDecodingError
from gateway.core.errors import PayloadTooLarge

LIMITS = DecodeLimits(max_decompressed=8 * 1024 * 1024, max_ratio=100)
EVENT = orjson.dumps([{"event": "e", "distinct_id": "d", "properties": {"token": "t", "x": "é+/"}}])


def decode(body: bytes, query: dict | None = None, content_type: str = "text/plain", encoding: str = "",
           legacy: bool = False, limits: DecodeLimits = LIMITS) -> bytes:
    return decode_payload(body, query or {}, content_type, encoding, legacy, limits)


def test_plain_json() -> None:
    assert decode(EVENT, content_type="application/json") == EVENT


def test_gzip_detected_by_magic_bytes_without_hint() -> None:
    assert decode(gzip.compress(EVENT)) == EVENT


def test_gzip_with_content_encoding_header() -> None:
    assert decode(gzip.compress(EVENT), content_type="application/json", encoding="gzip") == EVENT


def test_wrong_gzip_hint_is_ignored_for_base64_form() -> None:
    body = b"data=" + quote(base64.b64encode(EVENT).decode()).encode()
    assert decode(body, {"compression": "gzip-js"}, "application/x-www-form-urlencoded") == EVENT


def test_form_base64_with_compression_param() -> None:
    body = b"data=" + quote(base64.b64encode(EVENT).decode()).encode() + b"&compression=base64"
    assert decode(body, {}, "application/x-www-form-urlencoded") == EVENT


def test_form_base64_whose_plus_signs_arrived_as_spaces() -> None:
    payload = b'[{"event":"e","properties":{"v":"~~~>>>"}}]'
    encoded = base64.b64encode(payload)
    assert b"+" in encoded
    body = b"data=" + encoded  # not URL-encoded: '+' will be read as a space
    assert decode(body, {"compression": "base64"}, "application/x-www-form-urlencoded") == payload


def test_form_without_data_prefix_is_rejected() -> None:
    with pytest.raises(RequestDecodingError):
        decode(b"hello=1", {}, "application/x-www-form-urlencoded")


def test_whole_body_base64() -> None:
    assert decode(base64.b64encode(EVENT)) == EVENT


def test_get_data_query() -> None:
    assert decode(b"", {"data": base64.b64encode(EVENT).decode()}) == EVENT


def test_legacy_double_base64_only_on_legacy_paths() -> None:
    twice = base64.b64encode(base64.b64encode(EVENT))
    assert decode(twice, legacy=True) == EVENT
    assert decode(twice, legacy=False) == base64.b64encode(EVENT)


def test_lz64_form() -> None:
    compressed = lzstring.LZString().compressToBase64(EVENT.decode())
    body = b"data=" + quote(compressed).encode() + b"&compression=lz64"
    assert decode(body, {}, "application/x-www-form-urlencoded") == EVENT


def test_lz64_query_hint_and_raw_body() -> None:
    compressed = lzstring.LZString().compressToBase64(EVENT.decode()).encode()
    assert decode(compressed, {"compression": "lz64"}) == EVENT


def test_empty_payload() -> None:
    with pytest.raises(EmptyPayload):
        decode(b"")


@pytest.mark.parametrize("body", [b"\x1f\x8b\x08garbage", gzip.compress(EVENT)[:-12]])
def test_invalid_or_truncated_gzip(body: bytes) -> None:
    with pytest.raises(RequestDecodingError):
        decode(body)


def test_invalid_lz64() -> None:
    with pytest.raises(RequestDecodingError):
        decode(b"!!!!", {"compression": "lz64"})


def test_gzip_bomb_stops_at_the_output_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    with pytest.raises(PayloadTooLarge):
        decode(bomb, limits=DecodeLimits(max_decompressed=1024 * 1024, max_ratio=1e9))


def test_compression_ratio_guard() -> None:
    bomb = gzip.compress(b"[" + b" " * (4 * 1024 * 1024) + b"]")
    assert len(bomb) * 100 < 4 * 1024 * 1024
    with pytest.raises(PayloadTooLarge, match="ratio"):
        decode(bomb)


def test_lz64_bomb_is_capped() -> None:
    compressed = lzstring.LZString().compressToBase64("A" * 2_000_000).encode()
    with pytest.raises(PayloadTooLarge):
        decode(compressed, {"compression": "lz64"}, limits=DecodeLimits(1024 * 1024, 1e9))
