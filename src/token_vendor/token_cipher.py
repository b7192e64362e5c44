"""Encrypts tokens with KMS before they reach DynamoDB, bound to their cache key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from token_vendor.errors import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

KMS = "kms"
# Only when no key is configured (local experiments); the template always sets one.
PLAIN = "none"
_UNREACHABLE = frozenset(
    {"KMSInternalException", "ThrottlingException", "DependencyTimeoutException"}
)


class UndecryptableToken(Exception):
    """KMS refused to decrypt this item (wrong key, context, or permission): treat as a miss."""


class TokenCipher:
    """Envelope-free KMS encryption: a token is well under the 4 KB KMS plaintext limit."""

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
        try:
            answer = self._kms.encrypt(
                KeyId=self._key_id,
                Plaintext=token.encode(),
                EncryptionContext={"cache_key": cache_key},
            )
        except ClientError as exc:
            raise StoreUnavailable(f"KMS refused to encrypt ({_code(exc)})") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"KMS unreachable ({type(exc).__name__})") from None
        return answer["CiphertextBlob"], KMS

    def decrypt(self, blob: bytes, scheme: str, cache_key: str, *, quick: bool = False) -> str:
        if scheme == PLAIN:
            return blob.decode()
        kms = self._quick_kms if quick else self._kms
        if scheme != KMS or kms is None:
            raise UndecryptableToken(f"no key to decrypt a token stored as '{scheme}'")
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
        return answer["Plaintext"].decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))
