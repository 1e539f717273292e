"""KPI reports (DESIGN section 1): retention, value, RFM, NPS and playbook effect.

Each report module has one `build(connection, ...)` that computes the report in SQL (or with a
vectorised library), never with a Python loop per customer, and returns a result object with
`to_json()` (the `--json` document), `sheets()` (its tables as plain data, engine/reports/sheet.py,
drawn for a terminal by cli/report_tables.py) and `html(page)` (sections and charts for `--html`;
matplotlib is imported only then). cli/report.py only wires options to them. Every report stops
at now (the clock or `--as-of`, engine/reports/periods.py): a period that has ended is complete.
"""
