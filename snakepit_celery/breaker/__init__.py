"""A circuit breaker shared by every process that uses the same name and store.

State lives in the store (one Lua script per decision on Redis), so a fleet of
Celery workers trips, probes and recovers as one breaker. The hot path stays
cheap: while the breaker is closed a process trusts its own view of it for at
most ``max_staleness`` seconds and admits calls without a round trip;
failures are written through at once (so trips are exact and signalled once
cluster-wide), successes are counted locally and flushed in batches (with the
next store call, or by a background timer within 100 ms, or at exit).
Half-open admission always goes through the store, so the cluster-wide probe
limit holds exactly; a probe holds a lease that expires if its process dies.

Modules: ``state`` (the values), ``circuit`` (``CircuitBreaker``), ``shared``
(one process's view of the shared state and its store calls), ``flush``
(batched successes reach the store).
"""

from snakepit_celery.breaker.circuit import CircuitBreaker
from snakepit_celery.breaker.flush import flush_all
from snakepit_celery.breaker.state import BreakerState, BreakerStats

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "flush_all"]
