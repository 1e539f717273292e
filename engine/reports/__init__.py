"""KPI reports (DESIGN section 1): retention, value, RFM, NPS and playbook effect.

Each report module has one `build(connection, ...)` that computes the report in SQL (or with a
vectorised library), never with a Python loop per customer, and returns a result object with
`to_json()` (the `--json` document), `tables()` (rich tables for the terminal) and
`html(page)` (sections and charts for `--html`). cli/report.py only wires options to them.
"""
