"""The shared tier: one DynamoDB item per credential set, read and written conditionally.

One DynamoDB item per credential set holds the current token (encrypted), the refresh lease
(owner and expiry), the shared refresh backoff and the remembered `invalid_client` answer, so
that every decision is one conditional write on one item. The TTL attribute `expires_at` is the
token's expiry; TTL deletion lags, so readers always compare it themselves.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from token_vendor.aws.token_cipher import TokenCipher, UndecryptableToken
from token_vendor.errors import StoreUnavailable
from token_vendor.models import RECENT_TOKENS, CachedToken, Record

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_TOKEN_ATTRIBUTES = ("tok", "enc", "fp", "token_type", "issued_at", "secret_version")
_STATE_TTL_SECONDS = 86400


class TokenTable:
    """Conditional reads and writes of the shared tier; every failure is `StoreUnavailable`.

    `quick_client` (short timeouts, one attempt) serves `get(..., quick=True)`: the re-check of
    a token this environment already holds, which must fail fast when DynamoDB hangs.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        cipher: TokenCipher,
        *,
        quick_client: DynamoDBClient | None = None,
    ) -> None:
        self._client = client
        self._quick_client = quick_client or client
        self._table = table_name
        self._cipher = cipher

    def get(self, key: str, *, quick: bool = False) -> Record | None:
        """A strongly consistent read: a lease or a fresh commit must be seen at once."""
        client = self._quick_client if quick else self._client
        try:
            answer = client.get_item(
                TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(_describe("GetItem", exc)) from None
        item = answer.get("Item")
        return None if item is None else self._record(key, item, quick=quick)

    def try_acquire_lease(
        self,
        key: str,
        *,
        owner: str,
        now: float,
        lease_until: float,
        seen_fingerprint: str | None,
        forced_floor: float | None = None,
    ) -> tuple[bool, Record | None]:
        """Take the refresh lease if it is free and the token is still the one we judged.

        `seen_fingerprint` fences against refreshing a token someone else already replaced.
        With `forced_floor` this is a forced refresh: the lease is refused if a forced refresh
        happened after the floor (the per-credential rate limit). The reported token stays in
        the item until its replacement is committed: one caller's report must not take a
        vendable token from the whole fleet if the exchange then fails.
        """
        values: dict[str, Any] = {
            ":now": _n(now),
            ":owner": {"S": owner},
            ":until": _n(lease_until),
            ":state_ttl": _n(int(now) + _STATE_TTL_SECONDS),
        }
        condition = "(attribute_not_exists(lease_until) OR lease_until <= :now)"
        if seen_fingerprint is None:
            condition += " AND attribute_not_exists(fp)"
        else:
            condition += " AND fp = :seen"
            values[":seen"] = {"S": seen_fingerprint}
        update = (
            "SET lease_owner = :owner, lease_until = :until, "
            "expires_at = if_not_exists(expires_at, :state_ttl)"
        )
        if forced_floor is not None:
            condition += " AND (attribute_not_exists(forced_at) OR forced_at <= :floor)"
            values[":floor"] = _n(forced_floor)
            update += ", forced_at = :now"
        return self._conditional_update(key, update, condition, values)

    def commit(
        self,
        key: str,
        *,
        owner: str,
        token: CachedToken,
        now: float,
        recent: tuple[str, ...] = (),
    ) -> tuple[bool, Record | None]:
        """Store a new token and release the lease, only if `owner` still holds it (fencing).

        `recent` are the fingerprints of the tokens it replaces (Record.succession): a refresh
        that reports one of them is answered with the current token.

        If KMS will not encrypt the token, the table itself may still be up: the lease is freed
        before the failure is raised, or every other environment would wait it out (up to
        LEASE_SECONDS) only to fail the same way.
        """
        try:
            blob, scheme = self._cipher.encrypt(token.access_token, key)
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):
                self.release(key, owner=owner)
            raise
        values: dict[str, Any] = {
            ":owner": {"S": owner},
            ":tok": {"B": blob},
            ":enc": {"S": scheme},
            ":fp": {"S": token.fingerprint},
            ":type": {"S": token.token_type},
            ":issued": _n(token.issued_at),
            ":exp": _n(token.expires_at),
            ":now": _n(now),
        }
        update = (
            "SET tok = :tok, enc = :enc, fp = :fp, token_type = :type, issued_at = :issued, "
            "expires_at = :exp, updated_at = :now"
        )
        if recent:
            update += ", prev_fps = :recent"
            values[":recent"] = {"L": [{"S": value} for value in recent[:RECENT_TOKENS]]}
        if token.secret_version is not None:
            update += ", secret_version = :version"
            values[":version"] = {"S": token.secret_version}
        update += (
            " REMOVE lease_owner, lease_until, backoff_until, failures, failure_code, "
            "auth_failed_until, auth_failed_version"
        )
        if token.secret_version is None:
            update += ", secret_version"
        return self._conditional_update(key, update, "lease_owner = :owner", values)

    def record_failure(
        self,
        key: str,
        *,
        owner: str,
        backoff_until: float,
        failures: int,
        failure_code: str,
        auth_failed_until: float | None = None,
        auth_failed_version: str | None = None,
    ) -> None:
        """Share the refresh backoff (and a remembered invalid_client) and release the lease."""
        values: dict[str, Any] = {
            ":owner": {"S": owner},
            ":backoff": _n(backoff_until),
            ":failures": _n(failures),
            ":code": {"S": failure_code},
        }
        update = "SET backoff_until = :backoff, failures = :failures, failure_code = :code"
        if auth_failed_until is not None:
            update += ", auth_failed_until = :auth_until, auth_failed_version = :auth_version"
            values[":auth_until"] = _n(auth_failed_until)
            values[":auth_version"] = {"S": auth_failed_version or ""}
        update += " REMOVE lease_owner, lease_until"
        self._conditional_update(key, update, "lease_owner = :owner", values)

    def release(self, key: str, *, owner: str) -> None:
        self._conditional_update(
            key, "REMOVE lease_owner, lease_until", "lease_owner = :owner", {":owner": {"S": owner}}
        )

    def drop_other_versions(self, key: str, *, keep_version: str) -> bool:
        """Remove the token unless it was minted from `keep_version` (rotation purge)."""
        done, _ = self._conditional_update(
            key,
            "REMOVE " + ", ".join(_TOKEN_ATTRIBUTES) + ", auth_failed_until, auth_failed_version",
            "attribute_exists(fp) AND "
            "(attribute_not_exists(secret_version) OR secret_version <> :v)",
            {":v": {"S": keep_version}},
        )
        return done

    def _conditional_update(
        self,
        key: str,
        update: str,
        condition: str,
        values: dict[str, Any],
    ) -> tuple[bool, Record | None]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": key}},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            # The current item comes back with a failed condition: no second read needed.
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        try:
            self._client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                item = exc.response.get("Item")
                return False, self._record(key, item) if isinstance(item, dict) else None
            raise StoreUnavailable(_describe("UpdateItem", exc)) from None
        except BotoCoreError as exc:
            raise StoreUnavailable(_describe("UpdateItem", exc)) from None
        return True, None

    def _record(self, key: str, item: dict[str, Any], *, quick: bool = False) -> Record:
        token: CachedToken | None = None
        undecryptable = False
        fingerprint = _s(item, "fp")
        if fingerprint and "tok" in item:
            blob = item["tok"]["B"]
            try:
                plain = self._cipher.decrypt(bytes(blob), _s(item, "enc") or "", key, quick=quick)
            except UndecryptableToken:
                undecryptable = True
            else:
                token = CachedToken(
                    access_token=plain,
                    token_type=_s(item, "token_type") or "Bearer",
                    issued_at=_f(item, "issued_at"),
                    expires_at=int(_f(item, "expires_at")),
                    secret_version=_s(item, "secret_version"),
                )
        return Record(
            token=token,
            token_fingerprint=fingerprint,
            lease_owner=_s(item, "lease_owner"),
            lease_until=_f(item, "lease_until"),
            backoff_until=_f(item, "backoff_until"),
            failures=int(_f(item, "failures")),
            failure_code=_s(item, "failure_code"),
            auth_failed_until=_f(item, "auth_failed_until"),
            auth_failed_version=_s(item, "auth_failed_version"),
            forced_at=_f(item, "forced_at"),
            undecryptable=undecryptable,
            recent_fingerprints=tuple(
                str(entry["S"])
                for entry in item.get("prev_fps", {}).get("L", [])[:RECENT_TOKENS]
                if isinstance(entry, dict) and "S" in entry
            ),
        )


def _n(value: float) -> dict[str, str]:
    # Microseconds: a stored deadline is never rounded up by a visible amount (Retry-After
    # answers are computed from the unrounded value).
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return {"N": text or "0"}


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    return str(value["S"]) if value and "S" in value else None


def _f(item: dict[str, Any], name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else 0.0


def _describe(operation: str, exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"DynamoDB {operation} failed ({exc.response.get('Error', {}).get('Code')})"
    return f"DynamoDB {operation} unreachable ({type(exc).__name__})"
