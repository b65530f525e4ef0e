"""The worker bootsteps: a node's presence in the fleet, one module per job.

- ``preflight``: hardware detection and the lock-file check, before the pool starts;
- ``registry``: the node's record in the store and the heartbeat thread that refreshes it;
- ``queues``: which queues the node consumes while it or its devices are tainted;
- ``ack``: acknowledging crash-barrier tasks once the node's record lists them;
- ``reaper``: giving the orphaned tasks of dead nodes a final state, and their messages back;
- ``restore``: moving a dead node's unacknowledged messages back to their queues (Redis);
- ``fence``: stopping a node that learns it was declared dead;
- ``children``: noticing dead prefork pool children within 0.1 s;
- ``giveback``: marking the messages a warm shutdown gives back unstarted;
- ``in_flight``: what the node is running, as its record lists it;
- ``current``: which node this process belongs to (read by the event bridge);
- ``metrics``: serving Prometheus metrics when ``snakepit_metrics_port`` is set;
- ``steps``: the thin Celery steps that start and stop these services, and ``install_worker``.
"""
