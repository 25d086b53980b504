"""The committed OpenAPI document is the one dfd-api serves."""

from __future__ import annotations

import json
from pathlib import Path

from api.cli import openapi_json

COMMITTED = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_committed_openapi_document_is_current():
    assert COMMITTED.read_text() == openapi_json(), "docs/openapi.json is stale: run `dfd-api openapi > docs/openapi.json`"


def test_served_document_is_the_committed_one(api):
    with api.client(key=None) as http:
        served = http.get("/openapi.json").json()
    assert served == json.loads(COMMITTED.read_text())
    assert served["paths"]["/v1/verdicts/{request_id}"]["get"]["security"]  # keys are documented as required
