"""Encrypts tokens with KMS before they reach DynamoDB, bound to their cache key.

A token of up to 4,096 bytes (KMS `Encrypt`'s limit, and most JWTs) is encrypted by KMS itself
(scheme "kms"). A larger one is envelope-encrypted (scheme "kms-gcm"): KMS `GenerateDataKey`
gives a fresh AES-256 key, the token is sealed locally with AES-GCM from the `cryptography`
library, and the blob is the encrypted data key beside the ciphertext. Either way the cache key
is the KMS encryption context (and the AES-GCM associated data), so an item copied under
another cache key cannot be decrypted.

`cryptography` is imported only when an envelope is sealed or opened: the usual cold start
never pays for it, and its compiled core is the runtime's architecture (arm64), which the
build's import check on another machine could not load.

Envelope framing: version byte 1, the encrypted data key's length (2 bytes, big-endian), the
encrypted data key, a 12-byte nonce, then the AES-GCM ciphertext and tag.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from token_vendor.errors import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

KMS = "kms"
ENVELOPE = "kms-gcm"
# Only when no key is configured (local experiments); the template always sets one.
PLAIN = "none"
# KMS Encrypt takes at most this much plaintext; larger tokens are envelope-encrypted.
KMS_MAX_PLAINTEXT = 4096
FRAME_VERSION = 1
NONCE_BYTES = 12
# The encrypted data key's length field; KMS ciphertexts are a few hundred bytes.
_LENGTH_BYTES = 2
_TAG_BYTES = 16
_UNREACHABLE = frozenset(
    {"KMSInternalException", "ThrottlingException", "DependencyTimeoutException"}
)


class UndecryptableToken(Exception):
    """KMS refused to decrypt this item (wrong key, context, or permission): treat as a miss."""


class TokenCipher:
    """Seals tokens for the table and opens them again; every AWS failure is StoreUnavailable."""

    def __init__(
        self, kms: KMSClient | None, key_id: str | None, *, quick_kms: KMSClient | None = None
    ) -> None:
        self._kms = kms
        # Short timeouts, one attempt: decrypting a token this environment only re-checks.
        self._quick_kms = quick_kms or kms
        self._key_id = key_id

    def encrypt(self, token: str, cache_key: str) -> tuple[bytes, str]:
        if self._kms is None or not self._key_id:
            return token.encode(), PLAIN
        plain = token.encode()
        if len(plain) > KMS_MAX_PLAINTEXT:
            return self._seal(self._kms, self._key_id, plain, cache_key), ENVELOPE
        try:
            answer = self._kms.encrypt(
                KeyId=self._key_id,
                Plaintext=plain,
                EncryptionContext={"cache_key": cache_key},
            )
        except ClientError as exc:
            raise StoreUnavailable(f"KMS refused to encrypt ({_code(exc)})") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"KMS unreachable ({type(exc).__name__})") from None
        return answer["CiphertextBlob"], KMS

    def _seal(self, kms: KMSClient, key_id: str, plain: bytes, cache_key: str) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 - see top

        try:
            answer = kms.generate_data_key(
                KeyId=key_id,
                KeySpec="AES_256",
                EncryptionContext={"cache_key": cache_key},
            )
        except ClientError as exc:
            raise StoreUnavailable(f"KMS refused a data key ({_code(exc)})") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"KMS unreachable ({type(exc).__name__})") from None
        wrapped = answer["CiphertextBlob"]
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(answer["Plaintext"]).encrypt(nonce, plain, cache_key.encode())
        header = bytes([FRAME_VERSION]) + len(wrapped).to_bytes(_LENGTH_BYTES, "big")
        return header + wrapped + nonce + sealed

    def decrypt(self, blob: bytes, scheme: str, cache_key: str, *, quick: bool = False) -> str:
        if scheme == PLAIN:
            return blob.decode()
        kms = self._quick_kms if quick else self._kms
        if scheme not in (KMS, ENVELOPE) or kms is None:
            raise UndecryptableToken(f"no key to decrypt a token stored as '{scheme}'")
        if scheme == KMS:
            return self._kms_decrypt(kms, blob, cache_key).decode()
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - see the module's top
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        wrapped, nonce, sealed = unframe(blob)
        data_key = self._kms_decrypt(kms, wrapped, cache_key)
        try:
            return AESGCM(data_key).decrypt(nonce, sealed, cache_key.encode()).decode()
        except (InvalidTag, ValueError):
            raise UndecryptableToken("the token's ciphertext does not match its key") from None

    def _kms_decrypt(self, kms: KMSClient, blob: bytes, cache_key: str) -> bytes:
        try:
            if self._key_id:
                answer = kms.decrypt(
                    CiphertextBlob=blob,
                    EncryptionContext={"cache_key": cache_key},
                    KeyId=self._key_id,
                )
            else:
                answer = kms.decrypt(
                    CiphertextBlob=blob, EncryptionContext={"cache_key": cache_key}
                )
        except ClientError as exc:
            code = _code(exc)
            if code in _UNREACHABLE:
                raise StoreUnavailable(f"KMS failed ({code})") from None
            raise UndecryptableToken(f"KMS refused to decrypt ({code})") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"KMS unreachable ({type(exc).__name__})") from None
        return answer["Plaintext"]


def unframe(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """The encrypted data key, the nonce and the sealed token of an envelope blob."""
    head = 1 + _LENGTH_BYTES
    if len(blob) < head or blob[0] != FRAME_VERSION:
        raise UndecryptableToken("the token's envelope has an unknown format")
    length = int.from_bytes(blob[1:head], "big")
    nonce_at = head + length
    sealed_at = nonce_at + NONCE_BYTES
    if length == 0 or len(blob) < sealed_at + _TAG_BYTES:
        raise UndecryptableToken("the token's envelope is truncated")
    return blob[head:nonce_at], blob[nonce_at:sealed_at], blob[sealed_at:]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))
