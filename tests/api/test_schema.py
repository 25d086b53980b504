"""Generated requests against the committed OpenAPI document: dfd-api never answers 5xx to them.

Runs against the live server (real Redis and broker); bounded to a few examples per operation
so it stays well under a minute. The stream is left out (it never ends by design).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.api.conftest import BOTH_KEY, serve

DOCUMENT = Path(__file__).parents[2] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def live(stack):
    # long polls bounded to 0.3 s so generated `wait` values cannot stall the run
    served, stop = serve(stack.settings(api_rate_limit_per_s=10000.0, api_rate_burst=10000, api_max_wait_s=0.3),
                         run_indexer=False)
    yield served
    stop()


schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text())).exclude(path="/v1/verdicts/stream")


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # from schemathesis' own strategies
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_on_generated_requests(case, live):
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {BOTH_KEY}"}, checks=[not_a_server_error])
