"""Spool encryption at rest: AES-256-GCM per frame payload, keys from a file or the environment.

Keys: one or more 32-byte keys, oldest first, newest last, one per line (or comma-separated), each
`ID:KEY` or just `KEY`, KEY as 64 hex digits or base64; `#` starts a comment. They come from
`--spool-encryption-key-file` (GATEWAY_SPOOL_ENCRYPTION_KEY_FILE) or GATEWAY_SPOOL_ENCRYPTION_KEYS.
The ID is a label for messages; what is recorded on disk is the key's fingerprint (32 bits of
HMAC-SHA256(key, "gateway spool key id")), so a wrong key is detected from the header alone.

On disk: an encrypted segment has a version-2 header whose last field is the fingerprint of the key
of every frame in it. Each frame payload is `nonce (12 random bytes) | AES-GCM ciphertext | tag
(16)`: 28 bytes of overhead. The frame CRC covers that ciphertext, so torn-tail recovery, damage
detection and counting need no key. Random 96-bit nonces keep the usual AES-GCM bound: rotate the
key well before 2^32 records were written with it (add a new key last and restart the writers).

Rotation: writers seal new segments with the newest key; older segments stay readable as long as
their key remains in the list. A segment whose key is missing, or a frame that does not
authenticate, raises SpoolKeyError: records are never dropped or taken for a torn tail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.spool.errors import SpoolError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
ENV_KEYS = "GATEWAY_SPOOL_ENCRYPTION_KEYS"
ENV_KEY_FILE = "GATEWAY_SPOOL_ENCRYPTION_KEY_FILE"
_FINGERPRINT_INFO = b"gateway spool key id"


class SpoolKeyError(SpoolError):
    """A key is missing, malformed or wrong for the data: nothing is skipped, the read fails."""


def fingerprint(key: bytes) -> int:
    """The nonzero 32-bit id recorded in the header of segments sealed with `key`."""
    digest = hmac.new(key, _FINGERPRINT_INFO, hashlib.sha256).digest()
    return struct.unpack_from("<I", digest)[0] or 1


class SpoolKey:
    """One AES-256-GCM key: `seal` frame payloads for writing, `open` them for reading."""

    __slots__ = ("_aead", "key_id", "label")

    def __init__(self, label: str, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise SpoolKeyError(f"spool key {label!r} has {len(key)} bytes; AES-256 needs {KEY_SIZE}")
        self.label = label
        self.key_id = fingerprint(key)
        self._aead = AESGCM(key)

    def seal(self, payload: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, payload, None)

    def open(self, sealed: bytes | memoryview, where: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], None)
        except InvalidTag:
            raise SpoolKeyError(
                f"{where}: the record does not authenticate with spool key {self.label!r} "
                f"(id {self.key_id:08x}): wrong key material for this id, or tampered data"
            ) from None

    def __repr__(self) -> str:
        return f"SpoolKey({self.label!r}, id={self.key_id:08x})"


class Keyring:
    """Spool keys, oldest first; the newest seals new segments, any of them opens old ones."""

    def __init__(self, keys: Sequence[SpoolKey], source: str = "") -> None:
        if not keys:
            raise SpoolKeyError(f"no spool encryption keys in {source or 'the keyring'}")
        self.keys = list(keys)
        self.source = source
        self._by_id: dict[int, SpoolKey] = {}
        for key in self.keys:
            if key.key_id in self._by_id:
                raise SpoolKeyError(f"spool keys {self._by_id[key.key_id].label!r} and {key.label!r} are the same key")
            self._by_id[key.key_id] = key

    @property
    def newest(self) -> SpoolKey:
        return self.keys[-1]

    def get(self, key_id: int, where: str) -> SpoolKey:
        key = self._by_id.get(key_id)
        if key is None:
            known = ", ".join(f"{k.label}={k.key_id:08x}" for k in self.keys)
            raise SpoolKeyError(f"{where} is encrypted with key id {key_id:08x}, which is not among the "
                                f"configured spool keys ({known}) from {self.source}")
        return key


def parse_keys(text: str, source: str) -> Keyring:
    """Parse `ID:KEY` / `KEY` entries (newlines or commas between them, `#` comments)."""
    keys = []
    for line in text.splitlines():
        for entry in line.split("#", 1)[0].split(","):
            entry = entry.strip()
            if not entry:
                continue
            label, sep, value = entry.rpartition(":")
            label = label.strip() if sep else f"key{len(keys) + 1}"
            keys.append(SpoolKey(label, _decode_key(value.strip(), label, source)))
    return Keyring(keys, source)


def _decode_key(value: str, label: str, source: str) -> bytes:
    if len(value) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        key = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise SpoolKeyError(f"spool key {label!r} in {source} is not 32 bytes as 64 hex digits or base64")
    return key


def load_keyring(key_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Keyring | None:
    """Keys from `key_file`, else GATEWAY_SPOOL_ENCRYPTION_KEY_FILE, else GATEWAY_SPOOL_ENCRYPTION_KEYS;
    None when none is set (encryption off). Both a file and inline keys is an error."""
    environ = os.environ if environ is None else environ
    path = key_file or (Path(environ[ENV_KEY_FILE]) if environ.get(ENV_KEY_FILE) else None)
    inline = environ.get(ENV_KEYS, "")
    if path is not None and inline.strip():
        raise SpoolKeyError(f"spool keys given both in {path} and in {ENV_KEYS}: use one")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SpoolKeyError(f"cannot read spool key file {path}: {exc}") from exc
        return parse_keys(text, str(path))
    if inline.strip():
        return parse_keys(inline, ENV_KEYS)
    return None


def key_for(key_id: int, where: str, keyring: Keyring | None) -> SpoolKey:
    """The key of `keyring` that opens data recorded with `key_id` (SpoolKeyError if there is none)."""
    if keyring is None:
        raise SpoolKeyError(f"{where} is encrypted (key id {key_id:08x}) but no spool encryption keys are "
                            f"configured: use --spool-encryption-key-file or {ENV_KEYS}")
    return keyring.get(key_id, where)


def generate_key() -> str:
    """A new random key, base64, for a key file line."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
