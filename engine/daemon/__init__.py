"""`retain daemon`: Retain running continuously (docs/DAEMON.md).

The HTTP API (api.py: events, customers, Segment-compatible ingestion, unsubscribe, health,
metrics), the leader lease that lets one replica at a time schedule (leader.py), the schedule of
sweeps and cron ticks (schedule.py), and the loop that runs them beside the continuous dispatcher
(loop.py). Besides store, sync and outbox, the daemon writes its own rows: the leader lease and
the ticks it ran.
"""
