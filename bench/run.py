"""`make bench`: upstream calls and vend latency of the vendor and two baselines, side by side.

For each fleet size E, E execution environments per variant (each its own process, see
local/environment.py) send R requests each, spread over a few short token lifetimes, to:

- ``vendor``: the real handler (memory tier, DynamoDB tier, single-flight lease);
- ``per-env``: a per-environment memory cache, what an OAuth client library gives each service;
- ``naive``: an exchange on every request.

All three talk to one DynamoDB Local process (AWS's own engine: its conditional writes are
atomic as in DynamoDB), one moto server process (KMS, Secrets Manager) and one Igni stub process
on 127.0.0.1. Each variant
has its own stack (table, key, secret) and its own Igni client id, so the stub's call log tells
whose upstream call each one was. By default the three variants run at the same time for each
E (`--sequential` runs them one after another: cleaner latencies, three times as long).

Also measured: the cold start of the `sam build` artifact as Lambda runs it, to the first token
served from the DynamoDB tier, beside a bare boto3 + GetItem (bench/coldstart.py; ``make bench``
builds first), and a DynamoDB-tier hit with and without KMS (TOKEN_KMS_KEY_ID set / unset).

Prints a markdown report; writes JSON to bench/results/ (a timestamped file and latest.json).
Exit status 1 if any request failed or was not sent in time. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import coldstart
from local.dynamodb_local import DynamoDBLocal
from local.environment import EnvironmentProcess
from local.events import load_event
from local.igni_stub import StubProcess
from local.moto_server import MotoServer
from local.stack import LocalStack, create_stack
from token_vendor.config import Freshness, load_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
MAX_ENVIRONMENTS = 32
TIERS = ("memory", "dynamodb", "upstream")
# Environments started at once: more only makes them fight for the two cores.
START_WORKERS = 6
# An invocation gets this long (the fake Lambda context's timeout); the vendor answers before.
INVOKE_TIMEOUT_MS = 25_000
# A request for a profile nobody configured: every variant builds its clients and answers 404
# without touching Secrets Manager, DynamoDB or Igni.
WARM_UP_PROFILE = "bench-warm-up"
# The vendor records expires_at = floor(exchange time + expires_in): a token loses the fraction
# of a second of its exchange time, less than 1 s, 0.5 s on average.
MEAN_WHOLE_SECOND_LOSS_S = 0.5
# What the vendor logs when its refresh went wrong in a way that costs an extra upstream call.
VENDOR_EVENTS = {
    "lease_lost": "refresh lease lost before commit",
    "table_unavailable": "token table unavailable",
    "refresh_failed": "token refresh failed",
}


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    handler: str | None  # None: the real handler
    client_id: str
    client_secret: str = field(repr=False)


def _variants() -> tuple[Variant, ...]:
    # A fresh random secret per run: nothing here is a credential anywhere else.
    return (
        Variant("vendor", "token vendor", None, "bench-vendor", secrets.token_urlsafe(24)),
        Variant(
            "per-env",
            "per-environment cache",
            "bench.baselines:per_environment_handler",
            "bench-per-env",
            secrets.token_urlsafe(24),
        ),
        Variant(
            "naive",
            "naive (no cache)",
            "bench.baselines:naive_handler",
            "bench-naive",
            secrets.token_urlsafe(24),
        ),
    )


@dataclass(frozen=True)
class Settings:
    envs: tuple[int, ...]
    requests: int  # per environment and round
    lifetime: int  # seconds: the stub's expires_in
    lifetimes: float  # how many lifetimes a round lasts
    latency_ms: int  # the stub's answer latency
    import_repeats: int
    kms_samples: int
    sequential: bool
    quick: bool

    @property
    def duration(self) -> float:
        return self.lifetime * self.lifetimes

    @property
    def requests_per_lifetime(self) -> float:
        return self.requests / self.lifetimes


# 3.25 lifetimes of 8 s (26 s): with a refresh at 75 %, a token lifetime (below) is 5.25-6 s
# depending on the sub-second loss, so the round spans 5 of them whatever that loss
# (4 x 6 < 26 <= 5 x 5.25), and it ends 1-2 s after the 5th refresh (at about 24 s) and
# some 3 s before a 6th: neither the count nor its divisor flips between runs. 50 requests: one
# every 0.52 s per environment, 10 per environment and token lifetime.
DEFAULTS: dict[str, Any] = {
    "envs": (1, 4, 16, 32),
    "requests": 50,
    "lifetime": 8,
    "lifetimes": 3.25,
    "latency_ms": 150,
    "import_repeats": 7,
    "kms_samples": 200,
}
# 1.75 lifetimes (14 s): 3 token lifetimes whatever the sub-second loss (2 x 6 < 14 <= 3 x 5.25).
QUICK: dict[str, Any] = {
    "envs": (1, 8),
    "requests": 30,
    "lifetime": 8,
    "lifetimes": 1.75,
    "latency_ms": 150,
    "import_repeats": 3,
    "kms_samples": 60,
}


def _env_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers") from None
    if not values or any(not 1 <= v <= MAX_ENVIRONMENTS for v in values):
        raise argparse.ArgumentTypeError(f"each E must be between 1 and {MAX_ENVIRONMENTS}")
    return values


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Upstream calls and vend latency: token vendor vs per-environment cache "
        "vs naive, E environments as processes against DynamoDB Local, moto and the Igni stub.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: E=1,8, 1.75 lifetimes"
    )
    parser.add_argument("--envs", type=_env_list, help="fleet sizes, e.g. 1,4,16,32 (max 32)")
    parser.add_argument("--requests", type=int, help="requests per environment and round (R)")
    parser.add_argument("--lifetime", type=int, help="token lifetime the stub issues, seconds")
    parser.add_argument("--lifetimes", type=float, help="lifetimes a round lasts")
    parser.add_argument("--latency-ms", type=int, help="the stub's answer latency")
    parser.add_argument(
        "--import-repeats", type=int, help="fresh interpreters per cold-start line (median)"
    )
    parser.add_argument("--kms-samples", type=int, help="DynamoDB hits per KMS setting")
    parser.add_argument(
        "--sequential", action="store_true", help="run the variants one after another"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    values = {
        key: getattr(args, key) if getattr(args, key) is not None else base[key] for key in base
    }
    if values["requests"] < 1 or values["lifetime"] < 2 or values["lifetimes"] <= 0:
        parser.error("--requests >= 1, --lifetime >= 2 and --lifetimes > 0")
    if values["latency_ms"] < 0 or values["import_repeats"] < 1 or values["kms_samples"] < 1:
        parser.error("--latency-ms >= 0, --import-repeats >= 1, --kms-samples >= 1")
    settings = Settings(
        envs=tuple(values["envs"]),
        requests=int(values["requests"]),
        lifetime=int(values["lifetime"]),
        lifetimes=float(values["lifetimes"]),
        latency_ms=int(values["latency_ms"]),
        import_repeats=int(values["import_repeats"]),
        kms_samples=int(values["kms_samples"]),
        sequential=bool(args.sequential),
        quick=bool(args.quick),
    )
    return settings, args


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _loopback_only_environment() -> None:
    """Fake AWS credentials, no profile or config file, no proxy: nothing leaves 127.0.0.1."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "LOCAL_HANDLER"):
        os.environ.pop(var, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _round(percentile(values, 50)),
        "p99_ms": _round(percentile(values, 99)),
        "mean_ms": _round(statistics.fmean(values)) if values else None,
        "max_ms": _round(max(values)) if values else None,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ------------------------------------------------------------------------ token lifetimes


def freshness_env(policy: Freshness) -> dict[str, str]:
    """The environment variables through which the vendor (and the per-env cache) read it."""
    return {
        "TOKEN_REFRESH_FRACTION": repr(policy.refresh_fraction),
        "TOKEN_MIN_REMAINING_SECONDS": str(policy.min_remaining_seconds),
        "TOKEN_MIN_REMAINING_FRACTION": repr(policy.min_remaining_fraction),
    }


def token_lifetimes(run_s: float, lifetime: int, policy: Freshness) -> dict[str, Any]:
    """How many token lifetimes a round of `run_s` seconds spans: the divisor of the headline.

    A token lifetime is the time one token serves before the policy replaces it:
    refresh_fraction x the lifetime the vendor records, which is the stub's `expires_in` less
    the fraction of a second lost to the whole-second expiry (0.5 s on average; computed here,
    not fitted to what the round measured). The cold-start exchange opens the first one, so a
    round spans ceil(run_s / period) of them: the calls a perfect single flight makes. The
    range is that count for a loss of 1 s and of 0 s: when they differ, the round ends near a
    refresh point and a count one off the divisor is timing, not a fault.
    """

    def count(loss: float) -> int:
        period = policy.refresh_fraction * (lifetime - loss)
        return max(1, math.ceil(run_s / period - 1e-9))

    effective = lifetime - MEAN_WHOLE_SECOND_LOSS_S
    return {
        "run_s": round(run_s, 3),
        "refresh_fraction": policy.refresh_fraction,
        "effective_lifetime_s": effective,
        "period_s": round(policy.refresh_fraction * effective, 4),
        "elapsed": count(MEAN_WHOLE_SECOND_LOSS_S),
        "elapsed_range": [count(0.0), count(1.0)],
    }


# -------------------------------------------------------------------------- environments


class Fleet:
    """Every environment process the run started, by variant; all of them closed at the end."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._pools: dict[str, list[EnvironmentProcess]] = {}
        self._all: list[EnvironmentProcess] = []
        self._lock = threading.Lock()

    def ensure(
        self, variant: Variant, env: Mapping[str, str], count: int
    ) -> list[EnvironmentProcess]:
        """At least `count` environments of this variant, started in parallel when missing."""
        pool = self._pools.setdefault(variant.name, [])
        missing = count - len(pool)
        if missing > 0:
            first = len(pool)

            def start(index: int) -> EnvironmentProcess:
                proc = EnvironmentProcess(
                    env,
                    log_path=self._workdir / f"{variant.name}-{index:02d}.log",
                    handler=variant.handler,
                )
                with self._lock:
                    self._all.append(proc)
                return proc

            executor = ThreadPoolExecutor(max_workers=min(START_WORKERS, missing))
            try:
                pool.extend(executor.map(start, range(first, first + missing)))
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
        return pool[:count]

    def import_ms(self, variant: Variant) -> list[float]:
        return [proc.import_ms for proc in self._pools.get(variant.name, [])]

    def log_sizes(self, variant: Variant, count: int) -> list[int]:
        sizes = []
        for index in range(count):
            path = self._workdir / f"{variant.name}-{index:02d}.log"
            sizes.append(path.stat().st_size if path.exists() else 0)
        return sizes

    def log_text_since(self, variant: Variant, sizes: Sequence[int]) -> str:
        parts = []
        for index, size in enumerate(sizes):
            path = self._workdir / f"{variant.name}-{index:02d}.log"
            with contextlib.suppress(OSError), path.open("rb") as fh:
                fh.seek(size)
                parts.append(fh.read().decode("utf-8", "replace"))
        return "".join(parts)

    def close(self, *, kill: bool) -> None:
        with self._lock:
            procs, self._all = list(self._all), []

        def stop(proc: EnvironmentProcess) -> None:
            with contextlib.suppress(Exception):
                if kill:
                    proc.kill()
                proc.close()

        # In parallel: each child takes a moment to exit, and there can be a hundred.
        with ThreadPoolExecutor(max_workers=16) as executor:
            list(executor.map(stop, procs))
        self._pools.clear()


def new_environments(
    procs: Sequence[EnvironmentProcess], warm_up: Mapping[str, Any]
) -> list[float]:
    """Make each process a brand-new environment whose clients are built; returns their ms.

    The clients are built by a request for an unknown profile, a few environments at a time:
    on Lambda each environment builds them on its own CPU, while here up to 96 processes
    share the machine's cores, and that contention is not what the round measures.
    """

    def renew(proc: EnvironmentProcess) -> float:
        proc.reset()
        response = proc.invoke(warm_up)
        if response.get("statusCode") != 404:
            raise RuntimeError(f"warm-up request answered {response.get('statusCode')}")
        return float(response["elapsed_ms"])

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as executor:
        return list(executor.map(renew, procs))


# --------------------------------------------------------------------------------- round


@dataclass
class Sample:
    env: int
    started: float  # wall clock
    ended: float  # wall clock
    status: int
    tier: str | None
    elapsed_ms: float
    fingerprint: str | None
    expires_at: int | None
    expires_in: int | None
    error: str | None


def _fingerprint(token: str) -> str:
    # The stub's fingerprint: the benchmark never keeps a token, only this.
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _header(response: Mapping[str, Any], name: str) -> str | None:
    lowered = name.lower()
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == lowered and values:
            return str(values[-1])
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == lowered:
            return str(value)
    return None


def _sample(env_index: int, started: float, response: Mapping[str, Any]) -> Sample:
    ended = time.time()
    status = int(response.get("statusCode", 0))
    tier = _header(response, "X-Token-Cache")
    error: str | None = None
    fingerprint: str | None = None
    expires_at: int | None = None
    expires_in: int | None = None
    try:
        body = json.loads(response.get("body") or "{}")
    except ValueError:
        body = {}
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        fingerprint = _fingerprint(body["access_token"])
        expires_at = int(body.get("expires_at", 0))
        expires_in = int(body.get("expires_in", 0))
        # expires_in is floored to whole seconds: a token with 0.8 s left says 0 and is valid.
        if expires_at <= ended:
            error = "expired token vended"
        elif tier not in TIERS:
            error = f"no X-Token-Cache tier ({tier!r})"
    else:
        code = body.get("error") if isinstance(body, dict) else None
        error = f"HTTP {status} {code or ''}".strip()
    return Sample(
        env=env_index,
        started=started,
        ended=ended,
        status=status,
        tier=tier,
        elapsed_ms=float(response.get("elapsed_ms", 0.0)),
        fingerprint=fingerprint,
        expires_at=expires_at,
        expires_in=expires_in,
        error=error,
    )


@dataclass
class Lane:
    """One environment's share of a round: its schedule and what it saw."""

    variant: Variant
    index: int
    proc: EnvironmentProcess
    samples: list[Sample] = field(default_factory=list)
    unsent: int = 0
    crashed: str | None = None
    thread: threading.Thread | None = None


def _drive(
    lane: Lane,
    event: Mapping[str, Any],
    settings: Settings,
    *,
    start: float,
    send_until: float,
    stop: threading.Event,
) -> None:
    """Send R requests, evenly spaced over the round from a random phase, one at a time."""
    interval = settings.duration / settings.requests
    phase = random.uniform(0.0, interval)
    for i in range(settings.requests):
        due = start + phase + i * interval
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            lane.unsent += settings.requests - i
            return
        if stop.is_set() or time.monotonic() > send_until:
            lane.unsent += settings.requests - i
            return
        started = time.time()
        try:
            response = lane.proc.invoke(event, timeout_ms=INVOKE_TIMEOUT_MS)
        except (RuntimeError, OSError, ValueError) as exc:
            lane.crashed = f"{type(exc).__name__}: {exc}"
            lane.unsent += settings.requests - i
            return
        lane.samples.append(_sample(lane.index, started, response))


def run_round(
    fleets: Sequence[tuple[Variant, list[EnvironmentProcess]]],
    settings: Settings,
    event: Mapping[str, Any],
) -> tuple[dict[str, list[Lane]], float]:
    """Drive the fleets at the same time; returns each variant's lanes and the wall start."""
    stop = threading.Event()
    lanes = [
        Lane(variant, index, proc) for variant, procs in fleets for index, proc in enumerate(procs)
    ]
    start = time.monotonic() + 0.3
    wall_start = time.time() + 0.3
    grace = max(5.0, 0.25 * settings.duration)
    send_until = start + settings.duration + grace
    watchdog = send_until + INVOKE_TIMEOUT_MS / 1000.0 + 5.0
    for lane in lanes:
        lane.thread = threading.Thread(
            target=_drive,
            args=(lane, event, settings),
            kwargs={"start": start, "send_until": send_until, "stop": stop},
            name=f"{lane.variant.name}-{lane.index}",
            daemon=True,
        )
        lane.thread.start()
    try:
        for lane in lanes:
            if lane.thread is None:
                continue
            while lane.thread.is_alive() and time.monotonic() < watchdog:
                lane.thread.join(timeout=0.5)
            if lane.thread.is_alive():
                # Hung: a killed child ends the blocked read, and the lane records a crash.
                lane.crashed = "no answer before the watchdog"
                lane.proc.kill()
                lane.thread.join(timeout=10)
    finally:
        stop.set()
    by_variant: dict[str, list[Lane]] = {}
    for lane in lanes:
        by_variant.setdefault(lane.variant.name, []).append(lane)
    return by_variant, wall_start


def round_span(lanes: Mapping[str, Sequence[Lane]], wall_start: float, duration: float) -> float:
    """From the round's start to the last request sent in it, whatever the variant."""
    starts = [s.started for group in lanes.values() for lane in group for s in lane.samples]
    return (max(starts) - wall_start) if starts else duration


def summarize(
    variant: Variant,
    lanes: Sequence[Lane],
    calls: Sequence[Mapping[str, Any]],
    wall_start: float,
    settings: Settings,
    *,
    basis: Mapping[str, Any],
) -> dict[str, Any]:
    samples = [s for lane in lanes for s in lane.samples]
    ok = [s for s in samples if s.error is None]
    errors: Counter[str] = Counter(s.error for s in samples if s.error is not None)
    for lane in lanes:
        if lane.crashed:
            errors[f"environment crashed ({lane.crashed})"] += 1
    run_s = float(basis["run_s"])
    elapsed = int(basis["elapsed"])
    mine = sorted(
        (c for c in calls if c.get("client_id") == variant.client_id), key=lambda c: c["at"]
    )
    ok_calls = [c for c in mine if c.get("status") == 200]
    per_env_tokens = [
        len({s.fingerprint for s in lane.samples if s.error is None}) for lane in lanes
    ]
    expiry = {s.fingerprint: s.expires_at for s in ok if s.fingerprint and s.expires_at}
    # The lifetime the vendor recorded: expires_at - its exchange time, which is the stub's
    # call time less the stub's latency.
    lives = [
        expiry[c["fingerprint"]] - (float(c["at"]) - settings.latency_ms / 1000.0)
        for c in ok_calls
        if c["fingerprint"] in expiry
    ]
    gaps = [float(b["at"]) - float(a["at"]) for a, b in itertools.pairwise(mine)]
    # Each environment's first token request finds no token in memory (and, for the vendor,
    # maybe none in the table yet): reported on its own, the tiers are those that follow.
    first = [lane.samples[0] for lane in lanes if lane.samples]
    warm = [s for lane in lanes for s in lane.samples[1:] if s.error is None]
    tiers = {
        tier: latency_summary([s.elapsed_ms for s in warm if s.tier == tier]) for tier in TIERS
    }
    cold = latency_summary([s.elapsed_ms for s in first if s.error is None])
    cold["tiers"] = dict(Counter(s.tier or "error" for s in first))
    return {
        "variant": variant.name,
        "title": variant.title,
        "environments": len(lanes),
        "requests": len(samples),
        "scheduled": settings.requests * len(lanes),
        "unsent": sum(lane.unsent for lane in lanes),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "upstream_calls": len(mine),
        "upstream_calls_failed": len(mine) - len(ok_calls),
        "upstream_tier_answers": sum(1 for s in ok if s.tier == "upstream"),
        # Valid tokens whose floored expires_in reads 0 (less than a second left).
        "answers_with_expires_in_0": sum(1 for s in ok if s.expires_in == 0),
        "token_lifetimes": dict(basis),
        # The headline: upstream calls per token lifetime (see token_lifetimes()).
        "calls_per_token_lifetime": round(len(mine) / elapsed, 3),
        "requests_per_env_per_token_lifetime": round(len(samples) / len(lanes) / elapsed, 3)
        if lanes
        else None,
        # Secondary: per nominal lifetime (the stub's expires_in), cold start included.
        "calls_per_nominal_lifetime": round(len(mine) * settings.lifetime / run_s, 3)
        if run_s > 0
        else None,
        "tokens_vended": len({s.fingerprint for s in ok}),
        "tokens_per_env": round(statistics.fmean(per_env_tokens), 3) if per_env_tokens else None,
        "mean_gap_between_calls_s": _round(statistics.fmean(gaps), 3) if gaps else None,
        "mean_recorded_lifetime_s": _round(statistics.fmean(lives), 3) if lives else None,
        "upstream_call_times_s": [round(float(c["at"]) - wall_start, 3) for c in mine],
        "latency": tiers,
        "first_request": cold,
    }


# ---------------------------------------------------------------------------- AWS, stubs


# The moto server's endpoint (KMS, Secrets Manager) and DynamoDB Local's.
Endpoints = tuple[str, str]


def _new_stack(kind: str, endpoints: Endpoints, variant: Variant, stub: StubProcess) -> LocalStack:
    return create_stack(
        f"bench-{kind}-{uuid.uuid4().hex[:8]}",
        endpoint_url=endpoints[0],
        dynamodb_endpoint_url=endpoints[1],
        secret_value={"client_id": variant.client_id, "client_secret": variant.client_secret},
        igni_token_url=stub.token_url,
    )


def clear_table(stack: LocalStack) -> int:
    """Delete every item: the next round starts with a cold shared tier."""
    ddb = stack.dynamodb()
    deleted = 0
    for page in ddb.get_paginator("scan").paginate(
        TableName=stack.table_name, ProjectionExpression="pk"
    ):
        for item in page.get("Items", []):
            ddb.delete_item(TableName=stack.table_name, Key={"pk": item["pk"]})
            deleted += 1
    return deleted


def stored_schemes(stack: LocalStack) -> list[str]:
    ddb = stack.dynamodb()
    items = ddb.scan(TableName=stack.table_name).get("Items", [])
    return sorted({str(item["enc"]["S"]) for item in items if "enc" in item})


# -------------------------------------------------------------------------- measurements


def measure_kms(
    endpoint: Endpoints, stub: StubProcess, vendor: Variant, settings: Settings, fleet: Fleet
) -> dict[str, Any]:
    """DynamoDB-tier hits with TOKEN_KMS_KEY_ID set and unset, on two stacks of one kind.

    MEMORY_REVALIDATE_SECONDS=0 sends every request past the memory tier to DynamoDB; a long
    token lifetime keeps the token fresh there, so that every sample is a DynamoDB hit.
    """
    stub.configure(lifetime=3600)
    kms_stack = _new_stack("kms", endpoint, vendor, stub)
    plain_stack = _new_stack("plain", endpoint, vendor, stub)
    setups = {
        "with_kms": (kms_stack, {**kms_stack.function_env(), "MEMORY_REVALIDATE_SECONDS": "0"}),
        "without_kms": (
            plain_stack,
            {
                **plain_stack.function_env(),
                "MEMORY_REVALIDATE_SECONDS": "0",
                "TOKEN_KMS_KEY_ID": "",
            },
        ),
    }
    event = load_event("get_token")
    procs: dict[str, EnvironmentProcess] = {}
    for name, (_, env) in setups.items():
        variant = Variant(f"kms-{name}", name, None, vendor.client_id, vendor.client_secret)
        procs[name] = fleet.ensure(variant, env, 1)[0]
    samples: dict[str, list[float]] = {name: [] for name in setups}
    other: dict[str, Counter[str]] = {name: Counter() for name in setups}
    for proc in procs.values():
        for _ in range(6):  # the exchange, then warm connections; not recorded
            proc.invoke(event)
    order = list(procs)
    for i in range(settings.kms_samples):
        for name in order if i % 2 == 0 else reversed(order):
            response = procs[name].invoke(event)
            sample = _sample(0, time.time(), response)
            if sample.error is None and sample.tier == "dynamodb":
                samples[name].append(sample.elapsed_ms)
            else:
                other[name][sample.error or f"tier {sample.tier}"] += 1
    result: dict[str, Any] = {"samples_per_setting": settings.kms_samples}
    for name, (stack, _) in setups.items():
        result[name] = {
            **latency_summary(samples[name]),
            "stored_as": stored_schemes(stack),
            "not_dynamodb_hits": dict(other[name]),
        }
    with_p50, without_p50 = result["with_kms"]["p50_ms"], result["without_kms"]["p50_ms"]
    with_p99, without_p99 = result["with_kms"]["p99_ms"], result["without_kms"]["p99_ms"]
    if with_p50 is not None and without_p50 is not None:
        result["kms_adds_p50_ms"] = round(with_p50 - without_p50, 2)
    if with_p99 is not None and without_p99 is not None:
        result["kms_adds_p99_ms"] = round(with_p99 - without_p99, 2)
    return result


# ------------------------------------------------------------------------------- report


def _ms(summary: Mapping[str, Any]) -> str:
    if not summary["n"]:
        return "-"
    return f"{summary['p50_ms']:.1f} / {summary['p99_ms']:.1f} ({summary['n']})"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def render_markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    policy = s["freshness"]
    fraction = policy["refresh_fraction"]
    first = report["fleet"][0]["token_lifetimes"]
    lines = [
        "# make bench: token vendor vs per-environment cache vs naive",
        "",
        f"{report['started_at']} · {report['machine']['cores']} cores · Python "
        f"{report['machine']['python']} · commit {report['git']['commit'] or '?'}"
        f"{' (dirty tree)' if report['git']['dirty'] else ''}",
        "",
        f"Each of E environments (processes) sends {s['requests']} requests over "
        f"{s['duration_s']:g} s ({s['lifetimes']:g} x the stub's {s['lifetime']} s "
        f"`expires_in`); Igni stub latency {s['latency_ms']} ms; the vendor and the per-env "
        f"cache both refresh once {fraction * 100:g} % of a token's recorded lifetime has passed "
        f"and never vend one with less than min({policy['min_remaining_seconds']} s, "
        f"{policy['min_remaining_fraction'] * 100:g} %) of it left; variants run "
        f"{'one after another' if s['sequential'] else 'at the same time'}; "
        "DynamoDB Local holds the tables. "
        "Latency is the handler's time inside the environment, in ms: p50 / p99 (samples). "
        "Every environment starts empty (no token in memory or in the table) with its clients "
        "built; its first token request is on its own (for the vendor it includes waiting for "
        "the fleet's one cold exchange), the tier columns hold the requests after it.",
        "",
        "| E | variant | requests | errors | upstream calls | token lifetimes "
        "| **calls / token lifetime** | expected | calls ÷ vendor's | calls / nominal lifetime "
        "| memory hit | DynamoDB hit | miss (upstream) | first token request |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in report["fleet"]:
        errors = str(row["errors"]) + (f" (+{row['unsent']} unsent)" if row["unsent"] else "")
        basis = row["token_lifetimes"]
        lines.append(
            f"| {row['environments']} | {row['variant']} | {row['requests']} | {errors} "
            f"| {row['upstream_calls']} | {basis['elapsed']} "
            f"| **{_num(row['calls_per_token_lifetime'])}** "
            f"| {_num(row['expected_calls_per_token_lifetime'])} "
            f"| {_ratio(row.get('calls_vs_vendor'))} "
            f"| {_num(row['calls_per_nominal_lifetime'])} "
            f"| {_ms(row['latency']['memory'])} | {_ms(row['latency']['dynamodb'])} "
            f"| {_ms(row['latency']['upstream'])} | {_ms(row['first_request'])} |"
        )
    ambiguous = sorted(
        {
            row["environments"]
            for row in report["fleet"]
            if len(set(row["token_lifetimes"]["elapsed_range"])) > 1
        }
    )
    lines += [
        "",
        "**calls / token lifetime** = upstream calls ÷ token lifetimes elapsed. A token "
        "lifetime is the time one token serves before the policy replaces it: "
        f"{fraction * 100:g} % of the lifetime the vendor records ({s['lifetime']} s less the "
        f"fraction of a second the whole-second `expires_at` drops, {MEAN_WHOLE_SECOND_LOSS_S:g} s "
        f"on average), {first['period_s']:g} s. Token lifetimes elapsed = ceil(round duration ÷ "
        f"{first['period_s']:g} s), the cold-start exchange opening the first; the round "
        "duration runs from its start to the last request sent, and the variants that ran "
        "together share it. *expected* is issue #3's goal: vendor 1, per-env E, naive RxE "
        "with R an environment's requests per token lifetime "
        f"({s['requests']} ÷ {first['elapsed']} = {s['requests'] / first['elapsed']:g} in the "
        "first round). *calls ÷ vendor's*: the baseline's upstream calls over the vendor's "
        "in the same round (≈ E and ≈ RxE). *calls / nominal lifetime*: upstream calls ÷ "
        f"(round duration ÷ {s['lifetime']} s), cold start included, for comparison with "
        "earlier runs.",
    ]
    if ambiguous:
        lines += [
            "",
            f"Note (E = {', '.join(map(str, ambiguous))}): with a sub-second loss of 0 or "
            "1 s instead of 0.5 s the round would span a different number of token lifetimes "
            "(`token_lifetimes.elapsed_range` in the JSON): it ends near a refresh point, and "
            "a vendor count one off the divisor there is timing, not a fault.",
        ]
    lines += [
        "",
        "Vendor refresh cadence (lease lost, table unavailable and refresh failed are counted "
        "in the vendor's own logs: each lost lease is an exchange whose commit was refused):",
        "",
        "| E | upstream calls | upstream-tier answers | tokens vended | tokens / env "
        "| upstream call times (s from start) | mean gap (s) | recorded lifetime (s) "
        "| gap ÷ recorded lifetime | lease lost | table unavailable | refresh failed |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["fleet"]:
        if row["variant"] != "vendor":
            continue
        gap, life = row["mean_gap_between_calls_s"], row["mean_recorded_lifetime_s"]
        share = gap / life if gap and life else None
        times = ", ".join(f"{t:.1f}" for t in row["upstream_call_times_s"])
        logged = row["logged"]
        lines.append(
            f"| {row['environments']} | {row['upstream_calls']} | {row['upstream_tier_answers']} "
            f"| {row['tokens_vended']} | {_num(row['tokens_per_env'])} "
            f"| {times} | {_num(gap)} | {_num(life)} | {_num(share)} "
            f"| {logged['lease_lost']} | {logged['table_unavailable']} "
            f"| {logged['refresh_failed']} |"
        )
    lines += [
        "",
        "recorded lifetime = expires_at - the exchange's start (the stub's call time less its "
        "latency), mean over the round's tokens; tokens / env: distinct tokens an environment "
        "was handed, mean over the environments.",
    ]
    init = {
        row["variant"]: row["client_init"]["p50_ms"]
        for row in report["fleet"]
        if row["environments"] == max(r["environments"] for r in report["fleet"])
    }
    lines += [
        "",
        "Building an environment's clients (its first request, before the round, "
        f"{report['machine']['cores']} at a time), p50 ms: "
        + ", ".join(f"{name} {_num(ms, 0)}" for name, ms in init.items())
        + ".",
    ]
    lines += coldstart.render_markdown(report["cold_start"])
    kms = report.get("kms")
    if kms:
        lines += [
            "",
            "DynamoDB-tier hit with and without KMS (MEMORY_REVALIDATE_SECONDS=0, "
            f"{kms['samples_per_setting']} requests each, interleaved; against moto, so KMS "
            "here is a local round trip, not the AWS service):",
            "",
            "| TOKEN_KMS_KEY_ID | p50 (ms) | p99 (ms) | mean (ms) | hits | token stored as |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, label in (("with_kms", "set"), ("without_kms", "unset")):
            row = kms[name]
            lines.append(
                f"| {label} | {_num(row['p50_ms'])} | {_num(row['p99_ms'])} "
                f"| {_num(row['mean_ms'])} | {row['n']} | {', '.join(row['stored_as']) or '?'} |"
            )
        lines += [
            "",
            f"KMS adds {_num(kms.get('kms_adds_p50_ms'))} ms at p50 and "
            f"{_num(kms.get('kms_adds_p99_ms'))} ms at p99 to a DynamoDB-tier hit.",
        ]
    return "\n".join(lines) + "\n"


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
            return done.stdout.strip()
        return None

    commit = run("rev-parse", "--short", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def save(report: Mapping[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2) + "\n"
    path = RESULTS_DIR / f"bench-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    (RESULTS_DIR / "latest.json").write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------- main


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that every server and environment is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def expected_per_token_lifetime(name: str, envs: int, requests: int, elapsed: int) -> float:
    """Issue #3: 1 for the vendor, E for the per-env cache, R x E for the naive function.

    R is an environment's scheduled requests per token lifetime (requests / lifetimes).
    """
    if name == "vendor":
        return 1.0
    if name == "per-env":
        return float(envs)
    return round(requests / elapsed * envs, 3)


def run(settings: Settings, workdir: Path) -> dict[str, Any]:
    variants = _variants()
    vendor = variants[0]
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            **asdict(settings),
            "duration_s": settings.duration,
            "requests_per_lifetime": settings.requests_per_lifetime,
        },
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": _git(),
    }
    fleet = Fleet(workdir)
    moto = MotoServer(log_path=workdir / "moto-server.log")
    dynamodb = DynamoDBLocal(log_path=workdir / "dynamodb-local.log")
    stub: StubProcess | None = None
    interrupted = True
    try:
        dynamodb.launch()
        endpoint = (moto.start(), dynamodb.wait())
        stub = StubProcess(
            {v.client_id: v.client_secret for v in variants},
            lifetime=settings.lifetime,
            latency_ms=settings.latency_ms,
            log_path=workdir / "igni-stub.log",
        )
        stacks = {v.name: _new_stack(v.name, endpoint, v, stub) for v in variants}
        # Before any environment runs, so that the fresh interpreters have the machine (but
        # for the idle servers) to themselves. A long lifetime keeps the measured token fresh.
        _progress(f"cold start: {settings.import_repeats} fresh interpreters per line")
        stub.configure(lifetime=3600)
        report["cold_start"] = coldstart.measure(
            _new_stack("cold", endpoint, vendor, stub), repeats=settings.import_repeats
        )
        stub.reset()
        # The vendor's freshness policy as it reads it (token_vendor.config defaults unless the
        # stack's environment sets TOKEN_REFRESH_FRACTION and co.), given to the per-env cache
        # too: both replace a token at the same point, only the shared tier differs.
        policy = load_config(stacks[vendor.name].function_env()).freshness
        report["settings"]["freshness"] = asdict(policy)
        envs = {
            v.name: {**stacks[v.name].function_env(), **freshness_env(policy)} for v in variants
        }
        event = load_event("get_token")
        warm_up = load_event(
            "get_token",
            path=f"/token/{WARM_UP_PROFILE}",
            resource="/token/{profile}",
            pathParameters={"profile": WARM_UP_PROFILE},
        )
        rows: list[dict[str, Any]] = []
        for count in settings.envs:
            _progress(f"E={count}: starting environments ({len(variants) * count} in all)")
            fleets = [(v, fleet.ensure(v, envs[v.name], count)) for v in variants]
            groups = [[f] for f in fleets] if settings.sequential else [fleets]
            results: dict[str, dict[str, Any]] = {}
            for group in groups:
                # A cold start for everyone: no token in any environment or in the table.
                init_ms = {v.name: new_environments(procs, warm_up) for v, procs in group}
                clear_table(stacks[vendor.name])
                stub.reset()
                logs = {v.name: fleet.log_sizes(v, len(procs)) for v, procs in group}
                names = ", ".join(v.name for v, _ in group)
                _progress(f"E={count}: {names} for {settings.duration:g} s")
                lanes, wall_start = run_round(group, settings, event)
                calls = stub.calls()
                # One divisor for the variants that ran together (all three by default).
                span = round_span(lanes, wall_start, settings.duration)
                basis = token_lifetimes(span, settings.lifetime, policy)
                for variant, _ in group:
                    row = summarize(
                        variant, lanes[variant.name], calls, wall_start, settings, basis=basis
                    )
                    row["client_init"] = latency_summary(init_ms[variant.name])
                    text = fleet.log_text_since(variant, logs[variant.name])
                    row["logged"] = {k: text.count(v) for k, v in VENDOR_EVENTS.items()}
                    results[variant.name] = row
            base = results[vendor.name]["upstream_calls"]
            for variant in variants:
                row = results[variant.name]
                if variant is not vendor:
                    row["calls_vs_vendor"] = (
                        round(row["upstream_calls"] / base, 2) if base else None
                    )
                row["expected_calls_per_token_lifetime"] = expected_per_token_lifetime(
                    variant.name, count, settings.requests, row["token_lifetimes"]["elapsed"]
                )
                rows.append(row)
            summary = ", ".join(
                f"{v.name} {results[v.name]['upstream_calls']} calls" for v in variants
            )
            _progress(f"E={count}: {summary}")
        report["fleet"] = rows
        report["environment_import_ms"] = {
            v.name: _round(statistics.median(fleet.import_ms(v)), 1)
            for v in variants
            if fleet.import_ms(v)
        }
        _progress(f"DynamoDB-tier hit with and without KMS: {settings.kms_samples} each")
        report["kms"] = measure_kms(endpoint, stub, vendor, settings, fleet)
        interrupted = False
    finally:
        _progress("stopping environments, Igni stub, moto server and DynamoDB Local")
        fleet.close(kill=interrupted)
        if stub is not None:
            stub.stop()
        moto.stop()
        dynamodb.stop()
        _progress("stopped")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    _loopback_only_environment()
    # Every environment imports everything itself, so its import_ms is a whole cold import.
    multiprocessing.set_forkserver_preload([])
    workdir = Path(tempfile.mkdtemp(prefix="igni-bench-"))
    failed = True
    try:
        with _terminate_as_interrupt():
            report = run(settings, workdir)
        markdown = render_markdown(report)
        print(markdown)
        if args.markdown:
            args.markdown.write_text(markdown, encoding="utf-8")
        if not args.no_save:
            _progress(f"wrote {save(report).relative_to(ROOT)} and bench/results/latest.json")
            from bench.plot import plot_report  # one hunk here: bench/plot.py holds the rest

            _progress(f"drew {plot_report(report).relative_to(ROOT)}")
        failed = any(row["errors"] or row["unsent"] for row in report["fleet"])
        if failed:
            _progress("some requests failed or were not sent in time: see the errors column")
        return 1 if failed else 0
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130
    finally:
        if failed or args.keep_logs:
            _progress(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
