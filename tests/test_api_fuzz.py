"""schemathesis, a property-based API fuzzer, over the served /openapi.json: no 500 anywhere.

Bounded (a few examples per operation) so it runs in seconds; each operation gets its right
credentials, so generated bodies reach the row checks and the database rather than stopping
at 401.
"""

from __future__ import annotations

import base64

import hypothesis
import pytest
import schemathesis
import sqlalchemy as sa
from api_support import TOKEN, serve
from hypothesis import HealthCheck

EXAMPLES = 12
BASIC = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()


def _auth(path: str) -> dict[str, str]:
    if path in ("/v1/events", "/v1/customers"):
        return {"Authorization": f"Bearer {TOKEN}"}
    if path.startswith("/v1/"):
        return {"Authorization": BASIC}
    return {}


def test_fuzzer_finds_no_server_error(db: sa.Engine) -> None:
    with serve(db) as api:
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 14  # every route: the fuzzer skipped none
        failures: list[str] = []
        for operation in operations:
            _fuzz(operation, api.url, failures)
    assert failures == []


def _fuzz(operation: object, base_url: str, failures: list[str]) -> None:
    headers = _auth(operation.path)  # type: ignore[attr-defined]

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy())  # type: ignore[attr-defined]
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                            f"{response.text[:200]}")

    check()


@pytest.mark.parametrize("path", ["/v1/events", "/v1/customers", "/v1/track", "/v1/batch"])
def test_hostile_bodies_get_4xx(db: sa.Engine, path: str) -> None:
    import httpx

    bodies = [b'"\\ud800"', b'{"a": "\\u0000"}', b"[" * 100_000, b"NaN", b"{}", b"[]",
              b'[{"event_id": 1e400}]', b'{"customer_id": "' + b"9" * 5000 + b'"}']
    with serve(db) as api:
        for body in bodies:
            response = httpx.post(f"{api.url}{path}", content=body, headers=_auth(path))
            assert response.status_code < 500, (body[:40], response.text)
