"""From candidates to the Plan a live run commits: who enters, holdout, limits, idempotency keys,
due times, rendered actions; and `preview`, one action rendered in full for one customer.

`reader` reads in batches (candidates, customers, events, suppressions), `planner` decides from
plain values and a clock (pure: no database), `build.make_plan` wires them. Only reads. May
import: engine.errors, engine.clock, engine.store, engine.format, engine.query, and the
connectors through the registry.
"""
