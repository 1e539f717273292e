"""What one sync did, counted so that the numbers add up and a user knows what to fix.

Every row read ends in exactly one bucket, so `read` is the sum of the others:

- `inserted`: a new customer, event or suppressed address;
- `updated`: an existing customer or suppression whose given values changed (a later row of the
  same file that changes an earlier one counts here too);
- `unchanged`: an existing customer or suppression whose given values are all as stored;
- `duplicates`: an event whose `event_id` is known with exactly the same contents (a re-sync);
- `conflicts`: an event whose `event_id` is known with OTHER contents: the stored event is kept,
  and the row is listed with where the other one came from, since one of the two is wrong;
- `rejected`: a row that cannot be synced, with every reason.

Conflicts and rejected rows are the ones to fix: the CLI lists them by line and exits 1.
`warnings` lists rows that were synced but deserve a look (a feedback event without a score,
engine/sync/rows.py TYPE_RULES); they are counted in their bucket too, and do not fail a sync.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from operator import attrgetter
from typing import Any

SUMMARY_FIELDS = {
    "customers": ("inserted", "updated", "unchanged"),
    "events": ("inserted", "duplicates", "conflicts"),
    "suppressions": ("inserted", "updated", "unchanged"),
}
"""The counts each kind of sync can have, in the order the one-line summary shows them."""


@dataclass(frozen=True)
class RowError:
    """A row not synced: its 1-based line (a CSV header is line 1), why, and the row as read."""

    line: int
    reason: str
    raw: dict[str, str] | str


@dataclass
class SyncReport:
    """What one sync did; read = inserted + updated + unchanged + duplicates + conflicts + rejected."""

    kind: str
    source: str
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    conflicts: list[RowError] = field(default_factory=list)
    rejected: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: the counts this kind of sync can have."""
        counts = [f"read {self.read}"]
        for name in SUMMARY_FIELDS.get(self.kind, SUMMARY_FIELDS["customers"]):
            value = getattr(self, name)
            counts.append(f"{name} {len(value) if isinstance(value, list) else value}")
        counts.append(f"rejected {len(self.rejected)}")
        if self.warnings:
            counts.append(f"warnings {len(self.warnings)}")
        return ", ".join(counts)

    def problems(self) -> list[RowError]:
        """The rows not synced that a user should look at (conflicts and rejected), by line."""
        return sorted([*self.conflicts, *self.rejected], key=attrgetter("line"))

    def sort(self) -> None:
        """Order the listed rows by line (batches may find them out of order)."""
        for listed in (self.conflicts, self.rejected, self.warnings):
            listed.sort(key=attrgetter("line"))

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        return asdict(self)
