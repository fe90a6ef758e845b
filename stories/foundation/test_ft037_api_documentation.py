"""FT-037 API documentation: the worker describes its HTTP API in OpenAPI, and the description
holds when a fuzzer takes it at its word.

Acceptance:
- GET /openapi.json is an OpenAPI 3 document naming /execute, /cancel, /health and the /v1
  routes, each POST with its request body (fields, types, ranges) and its answers;
- schemathesis (a property-based API fuzzer we did not write) generates requests from that
  schema, valid and invalid, against a real worker: no answer is a 5xx, every status and content
  type is one the schema declares, invalid data is refused, and no request hangs; afterwards the
  worker is healthy and runs a job. Bounded: a few examples per operation on the tiny model.
"""
import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from fixtures.external_worker import require_extension
from fixtures.server_process import check_stream, execute, worker_server

# a test extra (pyproject.toml); a GPU machine that lacks it still collects the GPU suite
schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    status_code_conformance,
)

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-037")

EXAMPLES_PER_OPERATION = 30
REQUEST_TIMEOUT_S = 30            # a request that takes longer than this counts as a hang


def test_the_schema_describes_every_route_with_its_request_body(tiny_server):
    require_extension(tiny_server, "/openapi.json", "an OpenAPI description")
    schema = httpx.get(tiny_server.url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {"/execute", "/cancel", "/health", "/v1/models", "/v1/completions", "/v1/chat/completions"} <= set(paths)
    components = schema["components"]["schemas"]
    for path, model, required in [("/execute", "ExecuteRequest", {"job_id", "prompt"}),
                                  ("/cancel", "CancelRequest", {"job_id"}),
                                  ("/v1/completions", "CompletionRequest", {"model", "prompt"}),
                                  ("/v1/chat/completions", "ChatCompletionRequest", {"model", "messages"})]:
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert set(components[model]["required"]) == required
        assert components[model]["additionalProperties"] is False          # unknown fields are refused
    execute_fields = components["ExecuteRequest"]["properties"]
    assert {"max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop"} <= set(execute_fields)
    assert "text/event-stream" in paths["/execute"]["post"]["responses"]["200"]["content"]


@pytest.fixture(scope="module")
def fuzz_server():
    """The tiny model with a 32-token context: every fuzzed job is short, so the run is bounded."""
    from fixtures.tiny_models import tiny_model_path

    with worker_server(tiny_model_path("llama"), extra=["--ctx", "32"]) as server:
        yield server


def _operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    # Read every event stream to its end: schemathesis otherwise hangs up after a few events, which
    # cancels the job, and its next request may arrive before the slot is free (a correct 503).
    schema.config.max_stream_events = 100_000
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_declared_answers_and_never_a_server_error(fuzz_server, mode):
    operations = list(_operations(fuzz_server.url))
    assert len(operations) == 6
    if mode == GenerationMode.NEGATIVE:              # a GET without parameters has no invalid form
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           negative_data_rejection], timeout=REQUEST_TIMEOUT_S)

        fuzz()


def test_after_the_fuzzing_the_worker_is_healthy_and_runs_a_job(fuzz_server):
    health = httpx.get(fuzz_server.url + "/health").json()
    assert health["status"] == "ready" and health["job"] is None
    response, events = execute(fuzz_server.url, {"job_id": "ft037-after", "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"
    assert not [r for r in fuzz_server.narration() if r["event"] in ("internal_error", "inference_failed")]
    assert all(line.startswith("{") for line in fuzz_server.stderr_lines() if line.strip())
