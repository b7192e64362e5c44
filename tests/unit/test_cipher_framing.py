"""How tokens are sealed: KMS Encrypt up to its 4,096 bytes, an envelope beyond; and the
envelope's framing, byte by byte: version 1, the encrypted data key's length (2 bytes,
big-endian), the key, a 12-byte nonce, then the AES-GCM ciphertext and its 16-byte tag; and
every truncation refused as undecryptable (a miss), never a crash. Each test pins an edge a
one-character change to token_cipher.py would move (make mutate)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.fakes import Clock
from tests.invariants.world import Faults, HostileKms
from token_vendor.aws.token_cipher import (
    ENVELOPE,
    FRAME_VERSION,
    KMS,
    KMS_MAX_PLAINTEXT,
    NONCE_BYTES,
    PLAIN,
    TokenCipher,
    UndecryptableToken,
    unframe,
)
from token_vendor.errors import StoreUnavailable

KEY = "token#framing"
# The smallest token sealed in an envelope (KMS Encrypt takes at most 4,096 bytes).
LARGE = "L" * 4097


def kms() -> Any:
    return HostileKms(Faults(Clock(), hang_seconds=0.0))


class LongKeyKms:
    """KMS whose encrypted data keys are 258 bytes long (the length needs both bytes)."""

    def __init__(self) -> None:
        self.inner = kms()

    def generate_data_key(self, **kwargs: Any) -> dict[str, bytes]:
        answer = self.inner.generate_data_key(**kwargs)
        return {"Plaintext": answer["Plaintext"], "CiphertextBlob": b"k" * 258}


def test_the_envelope_is_version_length_key_nonce_then_ciphertext_and_tag() -> None:
    # Given a cipher whose KMS wraps data keys into 258 bytes
    cipher = TokenCipher(LongKeyKms(), "key-id")  # type: ignore[arg-type]
    # When a token of 4,097 bytes is sealed
    blob, scheme = cipher.encrypt(LARGE, KEY)
    # Then the blob is framed as documented
    assert scheme == ENVELOPE
    assert FRAME_VERSION == 1
    assert NONCE_BYTES == 12
    assert blob[0] == 1
    assert blob[1:3] == bytes([1, 2])  # 258, big-endian
    assert blob[3 : 3 + 258] == b"k" * 258
    assert len(blob) == 3 + 258 + 12 + 4097 + 16
    wrapped, nonce, sealed = unframe(blob)
    assert (wrapped, nonce, sealed) == (b"k" * 258, blob[261:273], blob[273:])


@pytest.mark.parametrize("token", ["tok-1", "x" * 4096, LARGE])
def test_a_sealed_token_opens_under_its_own_cache_key_only(token: str) -> None:
    # Given a token sealed for one cache key (by KMS Encrypt, or in an envelope)
    cipher = TokenCipher(kms(), "key-id")
    blob, scheme = cipher.encrypt(token, KEY)
    # When / Then it opens under that key, and is a miss under any other
    assert cipher.decrypt(blob, scheme, KEY) == token
    with pytest.raises(UndecryptableToken):
        cipher.decrypt(blob, scheme, "token#other")


def test_tokens_up_to_4096_bytes_go_to_kms_encrypt_and_larger_ones_in_an_envelope() -> None:
    # Given a cipher, and tokens of exactly KMS Encrypt's limit and one byte more
    assert KMS_MAX_PLAINTEXT == 4096
    cipher = TokenCipher(kms(), "key-id")
    # When / Then the first is a KMS ciphertext, the second an envelope
    assert cipher.encrypt("x" * 4096, KEY)[1] == KMS
    assert cipher.encrypt("x" * 4097, KEY)[1] == ENVELOPE


def test_each_seal_has_its_own_nonce() -> None:
    # Given / When the same token sealed twice
    cipher = TokenCipher(kms(), "key-id")
    first, _ = cipher.encrypt(LARGE, KEY)
    second, _ = cipher.encrypt(LARGE, KEY)
    # Then the nonces differ
    assert unframe(first)[1] != unframe(second)[1]


@pytest.mark.parametrize("key_id", [None, ""])
def test_without_a_key_the_token_is_stored_plain(key_id: str | None) -> None:
    # Given no KMS key configured (local experiments)
    cipher = TokenCipher(kms(), key_id)
    # When / Then the token is kept as its bytes, scheme "none"
    assert cipher.encrypt("tok-1", KEY) == (b"tok-1", PLAIN)
    assert TokenCipher(None, "key-id").encrypt("tok-1", KEY) == (b"tok-1", PLAIN)


def frame(version: int, length: int, rest: bytes) -> bytes:
    return bytes([version]) + length.to_bytes(2, "big") + rest


def test_the_shortest_envelope_is_read() -> None:
    # Given a one-byte key, a nonce and a bare tag (an empty token's ciphertext)
    blob = frame(1, 1, b"K" + b"n" * 12 + b"t" * 16)
    # When / Then it is split at the documented offsets
    assert unframe(blob) == (b"K", b"n" * 12, b"t" * 16)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "the token's envelope has an unknown format"),
        (b"\x01\x00", "the token's envelope has an unknown format"),
        (frame(2, 1, b"K" + b"n" * 12 + b"t" * 16), "the token's envelope has an unknown format"),
        (frame(0, 1, b"K" + b"n" * 12 + b"t" * 16), "the token's envelope has an unknown format"),
        (frame(1, 0, b""), "the token's envelope is truncated"),
        (frame(1, 0, b"n" * 12 + b"t" * 16), "the token's envelope is truncated"),
        (frame(1, 1, b"K" + b"n" * 12 + b"t" * 15), "the token's envelope is truncated"),
        (frame(1, 2, b"K" + b"n" * 12 + b"t" * 16), "the token's envelope is truncated"),
        (frame(1, 258, b"K" * 2 + b"n" * 12 + b"t" * 16), "the token's envelope is truncated"),
    ],
)
def test_a_malformed_envelope_is_undecryptable_and_says_why(blob: bytes, message: str) -> None:
    # Given / When / Then
    with pytest.raises(UndecryptableToken) as raised:
        unframe(blob)
    assert str(raised.value) == message


class RecordingKms:
    """KMS that records Encrypt's and GenerateDataKey's arguments, or fails as told."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.inner = kms()
        self.failure = failure
        self.calls: list[dict[str, Any]] = []

    def generate_data_key(self, **kwargs: Any) -> dict[str, bytes]:
        self.calls.append(kwargs)
        if self.failure is not None:
            raise self.failure
        return self.inner.generate_data_key(**kwargs)  # type: ignore[no-any-return]

    def encrypt(self, **kwargs: Any) -> dict[str, bytes]:
        self.calls.append(kwargs)
        if self.failure is not None:
            raise self.failure
        return self.inner.encrypt(**kwargs)  # type: ignore[no-any-return]


def test_kms_is_asked_with_the_configured_key_bound_to_the_cache_key() -> None:
    # Given a cipher over the configured KMS key
    recording = RecordingKms()
    cipher = TokenCipher(recording, "key-id")  # type: ignore[arg-type]
    # When a small and a large token are sealed
    cipher.encrypt("tok-1", KEY)
    cipher.encrypt(LARGE, KEY)
    # Then KMS encrypted the first, and gave an AES-256 data key for the second, both under
    # that key and in the cache key's context
    assert recording.calls == [
        {"KeyId": "key-id", "Plaintext": b"tok-1", "EncryptionContext": {"cache_key": KEY}},
        {"KeyId": "key-id", "KeySpec": "AES_256", "EncryptionContext": {"cache_key": KEY}},
    ]


DENIED = ClientError({"Error": {"Code": "AccessDeniedException"}}, "KMS")
UNREACHABLE = EndpointConnectionError(endpoint_url="https://kms.amazonaws.com")


@pytest.mark.parametrize(
    ("token", "failure", "message"),
    [
        ("tok-1", DENIED, "KMS refused to encrypt (AccessDeniedException)"),
        ("tok-1", UNREACHABLE, "KMS unreachable (EndpointConnectionError)"),
        (LARGE, DENIED, "KMS refused a data key (AccessDeniedException)"),
        (LARGE, UNREACHABLE, "KMS unreachable (EndpointConnectionError)"),
    ],
)
def test_kms_refusing_or_unreachable_is_store_unavailable_saying_why(
    token: str, failure: Exception, message: str
) -> None:
    # Given KMS refusing, or unreachable
    cipher = TokenCipher(RecordingKms(failure), "key-id")  # type: ignore[arg-type]
    # When / Then sealing fails as the store being unavailable, with the reason
    with pytest.raises(StoreUnavailable) as raised:
        cipher.encrypt(token, KEY)
    assert str(raised.value) == message
