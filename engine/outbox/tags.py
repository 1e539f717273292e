"""Playbook tags: what a `tag` action writes, in the dispatcher's outcome transaction.

A customer's tags have two sources kept apart (DESIGN 2.3): `file_tags`, which every
`retain sync customers` replaces (engine/sync/tags.py), and the playbooks' own, `tags_added` and
`tags_removed`, which only this module writes. `tags`, what conditions read
(`tags: {contains: low-activity}`), is (file_tags | tags_added) - tags_removed, file order first;
both writers keep it current, so the condition compiler needs to know none of this.

Adding a tag puts it in `tags_added` and takes it out of `tags_removed`; removing does the
reverse. The latest action about a tag wins, whatever the file says, and applying the same
action twice leaves the same row as applying it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from engine.errors import PermanentError
from engine.store.tables import customers


def merged_tags(file_tags: Sequence[str], added: Sequence[str],
                removed: Sequence[str]) -> list[str]:
    """(file_tags | added) - removed: the file's tags in their order, then the added ones."""
    gone = set(removed)
    return [tag for tag in dict.fromkeys([*file_tags, *added]) if tag not in gone]


def apply_tags(connection: sa.Connection, customer_id: str, add: Sequence[str],
               remove: Sequence[str]) -> list[str]:
    """Add and remove a customer's playbook tags in the caller's transaction; the tags now.

    The row is locked first (a no-op UPDATE ... RETURNING: a row lock on PostgreSQL, the write
    lock on SQLite), so a sync or another action writing the same customer at the same time
    waits instead of being overwritten.
    """
    both = sorted(set(add) & set(remove))
    if both:
        raise ValueError(f"customer {customer_id}: {', '.join(both)} both added and removed")
    c = customers.c
    row = connection.execute(
        sa.update(customers).where(c.customer_id == customer_id)
        .values(customer_id=c.customer_id)
        .returning(c.file_tags, c.tags_added, c.tags_removed)).first()
    if row is None:
        raise PermanentError(f"customer {customer_id} not found: no tags to change")
    file_tags, old_added, old_removed = (list(value or []) for value in row)
    added = list(dict.fromkeys([*(t for t in old_added if t not in remove), *add]))
    removed = list(dict.fromkeys([*(t for t in old_removed if t not in add), *remove]))
    tags = merged_tags(file_tags, added, removed)
    if (added, removed) != (old_added, old_removed):
        connection.execute(sa.update(customers).where(c.customer_id == customer_id)
                           .values(tags_added=added, tags_removed=removed, tags=tags))
    return tags
