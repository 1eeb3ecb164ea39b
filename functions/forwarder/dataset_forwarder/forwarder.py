"""Forwards one SQS record: parse, route, deliver to every target at most once, then dead-letter or retry.

Per target the outcome is one of: delivered, duplicate (delivered before), dead-lettered
(permanent failure, or transient on the last attempt), retry (transient). A record with any
`retry` target has its visibility pushed back and is reported in `batchItemFailures`; its next
receive tries only those targets, because the others are settled in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from .dead_letters import NO_TARGET, DeadLetter, DeadLetterQueue
from .envelope import Envelope, InvalidMessage, parse_envelope
from .inbound import InboundMessage
from .outcomes import (
    CONNECTION,
    INVALID_MESSAGE,
    INVALID_TARGET,
    TIMEOUT,
    AlreadyInFlight,
    DeliveryFailed,
    MayHaveLanded,
    retry_delay_s,
)
from .queue_control import QueueControl
from .routing import Route, route
from .settings import Settings
from .stats import DEAD_LETTERED, DELIVERED, DUPLICATE, LOOP_SKIPPED, RETRIED, UNROUTED, Stats
from .targets import Target, TargetStore, TargetsUnavailable

if TYPE_CHECKING:
    from .downstream import Downstreams
    from .ledger import Ledger

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What happened to one (record, target) in one try."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # delivered before (ledger), or the target already had it
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"


WORST_CASE_CALLS = 2  # a delivery may need a lookup (version, asset or token) before its POST
TIME_MARGIN_S = 3.0
# After a POST that may have landed, other copies of the pair wait (and its own retry waits) at least this many
# of the target's timeouts before checking the target: a downstream still working on the POST commits by then.
HOLD_TIMEOUTS = 2.0


def max_timeout_s(function_timeout_s: float) -> float:
    """The longest target timeout whose worst-case delivery can start in a fresh invocation."""
    return max(0.1, (function_timeout_s - TIME_MARGIN_S) / WORST_CASE_CALLS)


def verify_first(message: InboundMessage, envelope: Envelope) -> bool:
    """On a retry or a replay an earlier POST may have landed although its answer was lost."""
    return message.receive_count > 1 or envelope.only_targets is not None


class RetryLater(Exception):
    """The record goes back to the queue; its visibility has already been pushed back."""


@dataclass(frozen=True)
class Settlement:
    """What happened to one (record, target) in this try."""

    target: str
    outcome: Outcome
    error: str | None = None
    detail: str = ""
    retry_after_s: float | None = None


class Forwarder:
    def __init__(
        self,
        *,
        settings: Settings,
        targets: TargetStore,
        downstreams: Downstreams,
        ledger: Ledger,
        dead_letters: DeadLetterQueue,
        queue: QueueControl,
        stats: Stats,
        executor: Executor,
    ) -> None:
        self._settings = settings
        self._targets = targets
        self._downstreams = downstreams
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._queue = queue
        self._stats = stats
        self._executor = executor
        self._lambda_context: Any = None

    @contextmanager
    def invocation(self, lambda_context: Any) -> Iterator[None]:
        """Bracket one Lambda invocation: in-progress expiry follows it; metrics are flushed after it."""
        self._lambda_context = lambda_context
        self._ledger.register_lambda_context(lambda_context)
        try:
            yield
        finally:
            self._stats.flush()

    def _seconds_left(self) -> float:
        context = self._lambda_context
        if context is None or not hasattr(context, "get_remaining_time_in_millis"):
            return float("inf")
        return float(context.get_remaining_time_in_millis()) / 1000

    async def forward(self, message: InboundMessage) -> list[Settlement]:
        """Deliver one record to all its targets concurrently; raises RetryLater to keep it queued."""
        loop = asyncio.get_running_loop()
        try:
            planned = await loop.run_in_executor(self._executor, self._plan, message)
        except TargetsUnavailable as exc:
            log.error("targets unavailable; the record will be retried", extra={"error": str(exc)})
            await self._retry(message, [Settlement("*", Outcome.RETRY, CONNECTION, str(exc))])
        if planned is None:
            return []
        envelope, plan = planned
        settlements = list(
            await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._settle, message, envelope, t) for t in plan.targets),
                *(
                    loop.run_in_executor(
                        self._executor, self._reject, message, envelope, name, reason, plan.names_of(name)
                    )
                    for name, reason in plan.rejected
                ),
            )
        )
        pending = [s for s in settlements if s.outcome == Outcome.RETRY]
        if pending:
            await self._retry(message, pending)
        return settlements

    # -- steps ------------------------------------------------------------------------------

    def _plan(self, message: InboundMessage) -> tuple[Envelope, Route] | None:
        try:
            envelope = parse_envelope(message.body)
        except InvalidMessage as exc:
            log.error(
                "invalid message dead-lettered",
                extra={"message_id": message.message_id, "reason": str(exc)},
            )
            self._dead_letter(message, NO_TARGET, message.body, INVALID_MESSAGE, str(exc))
            return None
        plan = route(envelope, self._targets.catalog())
        context = {
            "event_id": envelope.id,
            "kind": envelope.kind,
            "uri": envelope.uri,
            "message_id": message.message_id,
        }
        for name in plan.looped:
            self._stats.count(LOOP_SKIPPED, name, kind=envelope.kind)
            log.info("target already in the trail, not delivered (loop guard)", extra={**context, "target": name})
        if plan.empty:
            self._stats.count(UNROUTED, kind=envelope.kind)
            log.info("no target matches the event", extra=context)
            return None
        return envelope, plan

    def _settle(self, message: InboundMessage, envelope: Envelope, target: Target) -> Settlement:
        context = {
            "event_id": envelope.id,
            "kind": envelope.kind,
            "uri": envelope.uri,
            "target": target.name,
            "message_id": message.message_id,
            "attempt": message.receive_count,
        }
        if message.receive_count > 1 and self._ledger.dead_lettered(message.message_id, target.name):
            log.info("already dead-lettered by an earlier try of this record", extra=context)
            return Settlement(target.name, Outcome.DEAD_LETTERED)
        # A delivery cut off by the Lambda timeout would fail the whole batch: start none that may not finish.
        needed_s = WORST_CASE_CALLS * target.timeout_s + TIME_MARGIN_S
        if self._seconds_left() < needed_s:
            why = f"not started: less than {needed_s:g}s left in this invocation"
            # on a retry, an earlier try may have landed: we did not get as far as checking
            failed = MayHaveLanded if verify_first(message, envelope) else DeliveryFailed
            return self._after_failure(message, envelope, target.name, failed(TIMEOUT, why, transient=True), context)
        started = time.monotonic()
        try:
            claim = self._ledger.claim(envelope.id, target.name)
            if claim.done:
                return self._duplicate(target.name, envelope, "already delivered to this target", context)
            try:
                result = self._post(message, envelope, target, earlier_try=claim.earlier_try)
            except MayHaveLanded as exc:  # no other copy posts until this POST, if it lands, has landed
                self._ledger.hold(claim, exc.hold_s)
                raise
            except Exception:  # nothing reached the target: a later try may post
                self._ledger.release(claim)
                raise
            self._ledger.complete(claim, result)
        except AlreadyInFlight as exc:  # that copy may deliver (or have delivered) it: unconfirmed either way
            failure: DeliveryFailed = MayHaveLanded(TIMEOUT, str(exc), transient=True)
        except DeliveryFailed as exc:
            failure = exc
        except Exception as exc:  # the idempotency table or a bug: never post without the ledger
            log.exception("delivery bookkeeping failed", extra=context)
            failure = DeliveryFailed(CONNECTION, f"idempotency store error: {type(exc).__name__}", transient=True)
        else:
            if result.get("found_downstream"):
                return self._duplicate(target.name, envelope, "the target already has it", context)
            latency_ms = (time.monotonic() - started) * 1000
            self._stats.count(DELIVERED, target.name, kind=envelope.kind)
            self._stats.latency(target.name, latency_ms)
            emitted = envelope.emitted_at  # read back as a time: a bounded value whatever the upstream sent
            log.info(
                "delivered",
                extra={
                    **context,
                    **result,
                    "latency_ms": round(latency_ms, 1),
                    "emitted_at": emitted.isoformat() if emitted else None,  # how old the event is at delivery
                },
            )
            return Settlement(target.name, Outcome.DELIVERED)
        return self._after_failure(message, envelope, target.name, failure, context)

    def _post(
        self, message: InboundMessage, envelope: Envelope, target: Target, *, earlier_try: bool
    ) -> dict[str, Any]:
        """POST the event, unless the target already has it: checked first when an earlier try may have landed.

        Returns what the ledger records. Raises MayHaveLanded, with the hold the pair needs, when the target may
        hold the event after this try.
        """
        unchecked = False  # an earlier try may have landed and nothing could look before this POST
        if earlier_try or verify_first(message, envelope):
            found = self._already_received(target, envelope)
            if found:
                return {"found_downstream": True}
            unchecked = found is None
        try:
            posted = self._downstreams.get(target).deliver(envelope)
        except DeliveryFailed as exc:
            if not (unchecked or isinstance(exc, MayHaveLanded)):
                raise
            # hold the pair, and wait as long before this record's own next try
            hold_s = self._post_hold_s(target)
            retry_after_s = max(exc.retry_after_s or 0.0, hold_s)
            raise MayHaveLanded(
                exc.error, exc.detail, transient=exc.transient, retry_after_s=retry_after_s, hold_s=hold_s
            ) from exc
        if posted.already_there:
            return {"found_downstream": True}
        return {"status": posted.status, "api": posted.api, "downstream_id": posted.downstream_id}

    def _duplicate(self, target: str, envelope: Envelope, why: str, context: dict[str, Any]) -> Settlement:
        self._stats.count(DUPLICATE, target, kind=envelope.kind)
        log.info(f"{why}, not posted again", extra=context)
        return Settlement(target, Outcome.DUPLICATE)

    def _min_hold_s(self) -> float:
        """A pair whose try may have landed is held at least as long as that record's own next try waits (jitter
        included), so no other copy of the event posts while it may still land."""
        return self._settings.retry_base_delay_s / 2

    def _post_hold_s(self, target: Target) -> float:
        return max(self._min_hold_s(), HOLD_TIMEOUTS * target.timeout_s)

    def _already_received(self, target: Target, envelope: Envelope) -> bool | None:
        # The check may page; it must end in time for the POST that may follow and the bookkeeping after it.
        deadline = time.monotonic() + self._seconds_left() - target.timeout_s - TIME_MARGIN_S
        try:
            return self._downstreams.get(target).already_received(envelope, deadline=deadline)
        except DeliveryFailed as exc:
            # The operator must know that this pair may be delivered already; a redrive checks again first.
            raise MayHaveLanded(
                exc.error,
                exc.detail,
                transient=exc.transient,
                retry_after_s=exc.retry_after_s,
                hold_s=self._min_hold_s(),
            ) from None

    def _after_failure(
        self,
        message: InboundMessage,
        envelope: Envelope,
        target: str,
        failure: DeliveryFailed,
        context: dict[str, Any],
        *,
        aimed_at: tuple[str, ...] | None = None,
    ) -> Settlement:
        """Retry, or dead-letter with a body aimed at `aimed_at` (default: the target itself)."""
        last_try = message.receive_count >= self._settings.max_attempts
        details = {**context, "error": failure.error, "detail": failure.detail}
        if failure.transient and not last_try:
            self._stats.count(RETRIED, target, kind=envelope.kind)
            log.warning("delivery failed, will retry", extra=details)
            return Settlement(target, Outcome.RETRY, failure.error, failure.detail, failure.retry_after_s)
        if self._delivered_before(envelope.id, target, details):
            return Settlement(target, Outcome.DUPLICATE)
        detail = failure.detail
        unconfirmed = isinstance(failure, MayHaveLanded)  # the target may hold the pair: a redrive checks first
        try:
            self._dead_letter(
                message,
                target,
                envelope.dead_letter_body(*(aimed_at or (target,))),
                failure.error,
                detail,
                unconfirmed=unconfirmed,
                kind=envelope.kind,
            )
        except Exception as exc:
            log.exception("cannot write the dead letter; the record will be retried", extra=details)
            return Settlement(target, Outcome.RETRY, CONNECTION, f"dead-letter queue error: {type(exc).__name__}")
        log.error("delivery failed, dead-lettered", extra={**details, "unconfirmed": unconfirmed})
        return Settlement(target, Outcome.DEAD_LETTERED, failure.error, detail)

    def _delivered_before(self, event_id: str, target: str, details: dict[str, Any]) -> bool:
        """Whether another copy or an earlier try delivered the pair this try failed on: then no dead letter."""
        try:
            delivered = self._ledger.delivered(event_id, target)
        except Exception:  # the table is unreachable: a dead letter is the safe side (a redrive checks first)
            log.warning("cannot read the ledger before dead-lettering", extra=details, exc_info=True)
            return False
        if delivered:
            self._stats.count(DUPLICATE, target, kind=details.get("kind"))
            log.info("failed, but already delivered by another try: not dead-lettered", extra=details)
        return delivered

    def _reject(
        self, message: InboundMessage, envelope: Envelope, name: str, reason: str, aimed_at: tuple[str, ...]
    ) -> Settlement:
        """One invalid_target letter for `name` (a target, or the label of all unknown names: `aimed_at`)."""
        context = {
            "event_id": envelope.id,
            "kind": envelope.kind,
            "uri": envelope.uri,
            "target": name,
            "message_id": message.message_id,
        }
        failure = DeliveryFailed(INVALID_TARGET, reason, transient=False)
        return self._after_failure(message, envelope, name, failure, context, aimed_at=aimed_at)

    def _dead_letter(
        self,
        message: InboundMessage,
        target: str,
        body: str,
        error: str,
        detail: str,
        *,
        unconfirmed: bool = False,
        kind: str | None = None,
    ) -> None:
        letter = DeadLetter.now(
            body=body,
            target=target,
            error=error,
            detail=detail,
            attempts=message.receive_count,
            unconfirmed=unconfirmed,
        )
        claim = self._ledger.claim_dead_letter(message.message_id, target)
        if claim.done:  # an earlier try of this record sent it
            return
        try:
            dead_letter_id = self._dead_letters.send(letter)
        except Exception:
            self._ledger.release(claim)
            raise
        self._ledger.complete(claim, {"dead_letter_id": dead_letter_id})
        self._stats.count(DEAD_LETTERED, target, kind=kind)

    async def _retry(self, message: InboundMessage, pending: list[Settlement]) -> NoReturn:
        retry_after = max((s.retry_after_s or 0.0 for s in pending), default=0.0)
        delay = retry_delay_s(
            message.receive_count,
            retry_after or None,
            base_s=self._settings.retry_base_delay_s,
            cap_s=self._settings.retry_max_delay_s,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._queue.delay, message.queue_arn, message.receipt_handle, delay)
        targets = ", ".join(s.target for s in pending)
        raise RetryLater(f"retry in {delay}s for {targets}")
