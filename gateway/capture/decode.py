"""Request bytes → JSON bytes, the way PostHog capture decodes them.

Handles the `?data=` query, whole-body base64, `data=` forms, gzip (by magic bytes: the hint is
often missing or wrong), lz-string ("lz64") and the legacy second base64 unwrap. Every inflation is
bounded by an output limit and a compression-ratio guard, so bombs are refused without being
inflated whole.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from isal import isal_zlib

from gateway.capture.errors import EmptyPayload, RequestDecodingError
from gateway.capture.lz64 import Lz64Error, Lz64TooLarge, decompress_from_base64
from gateway.core.errors import PayloadTooLarge

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
FORM_PREFIXES = (b"data=", b"ver=", b"_=", b"ip=", b"compression=")
GZIP_MAGIC = b"\x1f\x8b\x08"
LEGACY_PATHS = frozenset(("/e", "/capture", "/engage", "/track"))

_BASE64_STRICT = re.compile(rb"^[A-Za-z0-9+/=]*$")
_BASE64_WITH_SPACES = re.compile(rb"^[A-Za-z0-9+/= ]*$")
_INFLATE_CHUNK = 64 * 1024
# Below this many decompressed bytes the ratio guard never trips: tiny payloads compress absurdly well.
_RATIO_GUARD_FLOOR = 1024 * 1024


@dataclass(slots=True, frozen=True)
class DecodeLimits:
    """`max_decompressed` bounds the decoded payload; `max_ratio` bounds decoded/encoded size."""

    max_decompressed: int
    max_ratio: float


def compression_hint(value: str | None) -> str | None:
    """Normalise a compression hint to gzip | lz64 | base64, or None when unknown/absent."""
    if not value:
        return None
    value = value.strip().lower()
    if value in ("gzip", "gzip-js"):
        return "gzip"
    if value in ("lz64", "lz-string"):
        return "lz64"
    if value in ("base64", "b64"):
        return "base64"
    return None


def looks_like_base64(payload: bytes, *, allow_spaces: bool = False) -> bool:
    """capture-rs's heuristic: the first 128 bytes are base64 characters and the length fits."""
    pattern = _BASE64_WITH_SPACES if allow_spaces else _BASE64_STRICT
    return bool(payload) and len(payload) % 4 == 0 and pattern.match(payload[:128]) is not None


def is_legacy_path(path: str) -> bool:
    """Legacy routes (not /i/v0/e, /batch or /s) get a second base64 unwrap, as capture does."""
    end = path.find("/", 1)
    return (path if end < 0 else path[:end]) in LEGACY_PATHS  # the first segment: /e, /e/ and /e/x


def decode_payload(
    body: bytes,
    query: Mapping[str, str],
    content_type: str,
    content_encoding: str,
    legacy_path: bool,
    limits: DecodeLimits,
) -> bytes:
    """Return the JSON bytes carried by a capture request, or raise a GatewayError."""
    payload = query.get("data", "").encode() or body
    if not payload:
        raise EmptyPayload("empty request payload")

    form_hint = None
    if content_type == FORM_CONTENT_TYPE:
        payload, form_hint = _unwrap_form(payload)

    hint = compression_hint(query.get("compression")) or form_hint or compression_hint(content_encoding)

    if payload.startswith(GZIP_MAGIC):
        payload = _gunzip(payload, limits)
    elif hint == "lz64":
        payload = _lz64(payload, limits)
    elif hint == "base64" or (not payload.startswith(FORM_PREFIXES) and looks_like_base64(payload)):
        payload = _b64decode_or_keep(payload)
        if payload.startswith(GZIP_MAGIC):
            payload = _gunzip(payload, limits)

    if legacy_path and looks_like_base64(payload):
        payload = _b64decode_or_keep(payload)

    if len(payload) > limits.max_decompressed:
        raise PayloadTooLarge(f"decoded payload exceeds {limits.max_decompressed} bytes")
    return payload


def _unwrap_form(payload: bytes) -> tuple[bytes, str | None]:
    if not payload.startswith(FORM_PREFIXES):
        raise RequestDecodingError("expected form data")
    try:
        fields = parse_qs(payload.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise RequestDecodingError("invalid form data") from exc
    data = fields.get("data", [""])[0].encode()
    if not data:
        raise RequestDecodingError("form data has no data field")
    if b" " in data and looks_like_base64(data, allow_spaces=True):
        # '+' arrives as a space when the SDK did not URL-encode its base64.
        data = data.replace(b" ", b"+")
    return data, compression_hint(fields.get("compression", [None])[0])


def _b64decode_or_keep(payload: bytes) -> bytes:
    """Decode base64 (padding repaired); keep the input when it is not base64 after all."""
    try:
        return base64.b64decode(payload + b"=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        return payload


def _gunzip(payload: bytes, limits: DecodeLimits) -> bytes:
    """Inflate gzip in chunks, stopping as soon as the output or the ratio passes its limit."""
    inflater = isal_zlib.decompressobj(wbits=31)  # ISA-L: about 2x zlib's speed, same stream and checks
    parts: list[bytes] = []
    produced = 0
    data = payload
    try:
        while data:
            chunk = inflater.decompress(data, _INFLATE_CHUNK)
            produced += len(chunk)
            _check_inflated_size(produced, len(payload), limits)
            parts.append(chunk)
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
        if not inflater.eof:
            raise RequestDecodingError("invalid gzip data: truncated stream")
    except isal_zlib.error as exc:
        raise RequestDecodingError(f"invalid gzip data: {exc}") from exc
    return b"".join(parts)


def _check_inflated_size(produced: int, compressed: int, limits: DecodeLimits) -> None:
    if produced > limits.max_decompressed:
        raise PayloadTooLarge(f"decompressed payload exceeds {limits.max_decompressed} bytes")
    if produced > _RATIO_GUARD_FLOOR and produced > compressed * limits.max_ratio:
        raise PayloadTooLarge(f"compression ratio exceeds {limits.max_ratio:g}")


def _lz64(payload: bytes, limits: DecodeLimits) -> bytes:
    """lz-string base64 → UTF-16 text → UTF-8, capped (UTF-8 is never shorter than its UTF-16 units)."""
    try:
        text = decompress_from_base64(payload.decode("ascii"), limits.max_decompressed)
        decoded = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le").encode("utf-8")
    except Lz64TooLarge as exc:
        raise PayloadTooLarge(str(exc)) from exc
    except (Lz64Error, UnicodeError) as exc:
        raise RequestDecodingError("invalid lz64 data") from exc
    _check_inflated_size(len(decoded), len(payload), limits)
    return decoded
