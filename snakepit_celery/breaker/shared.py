"""One process's view of a breaker's shared state, and every store call made for it.

The store holds the truth; this view keeps three monotonic deadlines so the
hot path rarely asks: *closed until* (admit counted calls without a round
trip, for at most ``max_staleness``), *open until* (this process knows the
breaker is open: refuse while the store cannot be asked), *blind until* (the
store just failed: do not ask again for ``STORE_RETRY_INTERVAL``; admit calls
uncounted, or refuse them while known open). Only an unknown state fails
open. Successes are batched and flushed by ``breaker.flush``; failures and
probe outcomes are written through at once, and every transition the store
reports sends its signal from here, so each is sent once cluster-wide.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from snakepit_celery import signals
from snakepit_celery.breaker import flush
from snakepit_celery.breaker.state import LOCAL, UNCOUNTED, Admission, BreakerState
from snakepit_celery.errors import CircuitOpenError, StoreUnavailableError
from snakepit_celery.store import fail_open, report_store_error
from snakepit_celery.store.records import BreakerRecord, BreakerSnapshot
from snakepit_celery.testing import is_testing

if TYPE_CHECKING:
    from snakepit_celery.breaker.circuit import CircuitBreaker

__all__ = ["STORE_RETRY_INTERVAL", "SharedView"]

#: After a store error, how long calls are admitted (uncounted) without asking again.
STORE_RETRY_INTERVAL = 1.0


class SharedView:
    """The local view of ``owner``'s shared state; signals are sent with ``owner`` as sender."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self.owner = owner
        self.name = owner.name
        self._closed_until = 0.0
        self._open_until = 0.0
        self._blind_until = 0.0
        self._pending = 0
        self._lock = threading.Lock()
        flush.register(self)

    # -- admission ----------------------------------------------------------------
    def admit(self) -> Admission:
        """Admit one call or raise ``CircuitOpenError`` (asks the store only when needed)."""
        if is_testing():
            return UNCOUNTED
        now = time.monotonic()
        if self._closed_until > now:
            return LOCAL
        if self._blind_until > now:
            return self._admit_blind(now)
        return self._admit_from_store()

    def _admit_blind(self, now: float) -> Admission:
        """The store cannot be asked: refuse while known open, else admit uncounted."""
        if self._open_until > now:
            raise CircuitOpenError(self.name, self._open_until - now)
        return UNCOUNTED

    def _admit_from_store(self) -> Admission:
        owner = self.owner
        try:
            if self._flush_batch(owner) == BreakerState.CLOSED:
                return LOCAL  # the store just answered "closed": as fresh as an acquire
            decision = owner.store.breaker_acquire(
                self.name,
                reset_timeout=owner.reset_timeout,
                half_open_max_calls=owner.half_open_max_calls,
                probe_ttl=owner.probe_ttl,
            )
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return self._admit_blind(time.monotonic())
        self._learn(decision.state, decision.retry_after)
        if decision.transition == BreakerState.HALF_OPEN:
            signals.breaker_half_open.send(sender=owner, pool=self.name)
        if not decision.allowed:
            self._closed_until = 0.0
            raise CircuitOpenError(self.name, decision.retry_after)
        if decision.probe is None and decision.state == BreakerState.CLOSED:
            self._refresh_closed()
        else:
            self._closed_until = 0.0
        return Admission(counted=True, probe=decision.probe)

    # -- outcomes -------------------------------------------------------------------
    def succeeded(self, admission: Admission) -> None:
        """Count a success: a probe's is written through, others are batched."""
        if not admission.counted:
            return
        if admission.probe is not None:
            self._record(success=True, probe=admission.probe)
            return
        with self._lock:
            self._pending += 1
            first = self._pending == 1
        if first:
            flush.schedule(self)

    def failed(self, admission: Admission, exc: BaseException) -> None:
        """Count the failure ``exc`` (written through); excluded errors prove a probe's service."""
        if not admission.counted:
            return
        if isinstance(exc, self.owner.exclude):
            if admission.probe is not None:
                self._record(success=True, probe=admission.probe, reraise=False)
            return
        if not isinstance(exc, Exception) and admission.probe is None:
            return  # KeyboardInterrupt, SystemExit, cancellation: not the service's fault
        self._record(success=False, probe=admission.probe, reraise=False)

    def record_manual(self, *, success: bool) -> None:
        """Record the outcome of a call made outside the breaker, admitted now."""
        if is_testing():
            return
        probe = None
        if self._closed_until <= time.monotonic():
            try:
                probe = self._admit_from_store().probe
            except CircuitOpenError:
                probe = None
        self._record(success=success, probe=probe)

    def flush(self) -> None:
        """Write the batched successes to the store now."""
        try:
            self._flush_batch(self.owner)
        except StoreUnavailableError as exc:
            report_store_error(exc)

    # -- reading and resetting --------------------------------------------------------
    def peek(self) -> BreakerSnapshot:
        """The store's view, no side effect; when it fails, what this process knows."""
        try:
            snap = self.owner.store.breaker_peek(self.name, reset_timeout=self.owner.reset_timeout)
        except StoreUnavailableError as exc:
            if self._store_down(exc):
                return BreakerSnapshot("open", 0, 0, 0, self._open_until - time.monotonic())
            return BreakerSnapshot("closed", 0, 0, 0, 0.0)
        self._learn(snap.state, snap.retry_after)
        return snap

    def reset(self) -> None:
        """Forget the breaker in the store; ``breaker_closed`` if it was not closed."""
        with self._lock:
            self._pending = 0
        self._closed_until = self._open_until = 0.0
        try:
            previous = self.owner.store.breaker_reset(self.name)
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return
        self._blind_until = 0.0
        if previous != BreakerState.CLOSED:
            signals.breaker_closed.send(sender=self.owner, pool=self.name)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock, no batch (the parent flushes its own)."""
        self._lock = threading.Lock()
        self._pending = 0

    # -- internals ----------------------------------------------------------------------
    def _flush_batch(self, owner: CircuitBreaker) -> str | None:
        """Write the batched successes; the state the store answered, None if none was due."""
        with self._lock:
            count, self._pending = self._pending, 0
        if not count:
            return None
        record = owner.store.breaker_record(
            self.name,
            success=True,
            failure_threshold=owner.failure_threshold,
            count=count,
            config=owner.stored_config(),
        )
        self._apply(record)
        return record.state

    def _record(self, *, success: bool, probe: str | None, reraise: bool = True) -> None:
        """Write one outcome through to the store (batched successes go first, in order)."""
        owner = self.owner
        try:
            self._flush_batch(owner)
            record = owner.store.breaker_record(
                self.name,
                success=success,
                failure_threshold=owner.failure_threshold,
                probe=probe,
                config=owner.stored_config(),
            )
        except StoreUnavailableError as exc:
            if reraise:
                self._store_down(exc)
            else:
                report_store_error(exc)
            return
        self._apply(record)

    def _apply(self, record: BreakerRecord) -> None:
        """Update the view from a store answer and send the transition's signal."""
        opened = record.transition == "opened"
        judged, _ = self.owner.judged(record.config)
        self._learn(record.state, float(judged["reset_timeout"]) if opened else None)
        if record.state == BreakerState.CLOSED:
            self._refresh_closed()
        else:
            self._closed_until = 0.0
        if opened:
            signals.breaker_opened.send(
                sender=self.owner, failure_count=record.failures, pool=self.name, reason="failures"
            )
        elif record.transition == "closed":
            signals.breaker_closed.send(sender=self.owner, pool=self.name)

    def _refresh_closed(self) -> None:
        if self.owner.max_staleness > 0:
            self._closed_until = time.monotonic() + self.owner.max_staleness

    def _learn(self, state: str, open_for: float | None) -> None:
        """Note a store answer: the state, and for how long it stays open if known."""
        self._blind_until = 0.0
        if state != BreakerState.OPEN:
            self._open_until = 0.0
        elif open_for is not None:
            self._open_until = time.monotonic() + open_for

    def _store_down(self, exc: StoreUnavailableError) -> bool:
        """A store call failed: stop asking for a while; True when known open (refuse then).

        Only an unknown state fails open (logged at most once a minute) or
        raises, per ``fail_open()``; a breaker this process knows to be open
        stays open until its reset timeout.
        """
        now = time.monotonic()
        self._blind_until = now + STORE_RETRY_INTERVAL
        known_open = self._open_until > now
        if not known_open and not fail_open():
            raise exc
        report_store_error(exc)
        return known_open
