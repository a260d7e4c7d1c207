"""HTTP behaviour: every bad request is a 4xx OpenAI-shaped JSON error, never a traceback;
keys guard what they must; limits hold; /health and /metrics answer."""

from __future__ import annotations

import http.client
import json
import re

import pytest
from serve.helpers import running

from bitstack.errors import InputError
from bitstack.serve.server import check_host

MODEL = "tiny-serve.bstk"


@pytest.fixture(scope="module")
def srv(serve_artifact):
    with running(serve_artifact, max_prompt_tokens=50, max_tokens_limit=100, max_body="4kB") as handle:
        yield handle


def assert_error(response, status, param=None, code=None):
    got, _, body = response
    assert got == status, body
    assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in body["error"]["message"] and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def completion(**fields):
    return {"model": MODEL, "prompt": "the cat", "max_tokens": 4, **fields}


@pytest.mark.parametrize("body,param", [
    ({"prompt": "the cat"}, "model"),
    (completion(max_tokens="many"), "max_tokens"),
    (completion(max_tokens=0), "max_tokens"),
    (completion(temperature=5), "temperature"),
    (completion(top_p=0), "top_p"),
    (completion(n=2), "n"),
    (completion(logprobs=2), "logprobs"),
    (completion(echo=True), "echo"),
    (completion(presence_penalty=1.0), "presence_penalty"),
    (completion(stream="yes please"), "stream"),
    (completion(prompt=["the cat", "a dog"]), "prompt"),
    (completion(prompt=[1, 2, 999]), "prompt"),
    (completion(prompt={"text": "x"}), "prompt"),
    (completion(stop=["a", "b", "c", "d", "e"]), "stop"),
    (completion(max_tokens=101), "max_tokens"),
    (completion(seed=2**70), "seed"),
    (completion(stream_options={"include_usage": True}), None),
])
def test_bad_completion_requests_get_400(srv, body, param):
    assert_error(srv.request("POST", "/v1/completions", body), 400, param)


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
])
def test_bad_chat_requests_get_400(srv, body, param):
    assert_error(srv.request("POST", "/v1/chat/completions", body), 400, param)


def test_malformed_bodies_get_400(srv):
    assert "not valid JSON" in assert_error(srv.request("POST", "/v1/completions", raw=b"{nope"), 400)["message"]
    assert_error(srv.request("POST", "/v1/completions", raw=b"[1, 2]"), 400)
    assert_error(srv.request("POST", "/v1/completions", raw=b"\xff\xfe"), 400)


def test_limits_prompt_context_and_body(srv):
    long_prompt = " ".join(["cat"] * 51)
    assert_error(srv.request("POST", "/v1/completions", completion(prompt=long_prompt)), 400, "prompt",
                 "context_length_exceeded")
    assert srv.request("POST", "/v1/completions", completion(prompt=" ".join(["cat"] * 50), max_tokens=100))[0] == 200
    huge = completion(prompt="cat " * 2000)
    assert_error(srv.request("POST", "/v1/completions", huge), 413, code="request_too_large")
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)  # no Content-Length: chunked
    body = json.dumps(huge).encode()
    connection.request("POST", "/v1/completions", body=iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert_error((response.status, None, json.loads(response.read())), 413, code="request_too_large")
    connection.close()


def test_context_overflow_is_refused(serve_artifact):
    with running(serve_artifact, max_tokens_limit=1000) as srv:
        error = assert_error(srv.request("POST", "/v1/completions", completion(max_tokens=255)), 400, "max_tokens",
                             "context_length_exceeded")
        assert "256" in error["message"]


def test_unknown_model_route_and_method(srv):
    assert_error(srv.request("POST", "/v1/completions", completion(model="gpt-4")), 404, "model", "model_not_found")
    assert_error(srv.request("GET", "/v2/nothing"), 404)
    assert_error(srv.request("GET", "/v1/completions"), 405)
    assert_error(srv.request("GET", "/v1/models/other"), 404)


def test_admin_needs_the_key(srv):
    assert_error(srv.request("POST", "/admin/memory", {"memory": "1MB"}), 401, code="invalid_api_key")
    assert_error(srv.request("POST", "/admin/memory", {"memory": "1MB"}, key="wrong"), 401)
    assert_error(srv.request("GET", "/admin/memory"), 401)
    key = srv.server.admin_key
    assert_error(srv.request("POST", "/admin/memory", {"memory": "lots"}, key=key), 400, "memory")
    assert_error(srv.request("POST", "/admin/memory", {"size": "1MB"}, key=key), 400)
    state = srv.admin_memory("auto", "0")
    assert state["target_auto"] and state["target"].startswith("auto")
    state = srv.admin_memory("2MB")
    assert state["applied"] and state["target_bytes"] == 2_000_000 and not state["target_auto"]
    status, _, body = srv.request("GET", "/admin/memory", key=key)
    assert status == 200 and body["target_bytes"] == 2_000_000


def test_api_key_guards_v1_but_not_health(serve_artifact):
    with running(serve_artifact, api_key="sesame") as srv:
        assert_error(srv.request("GET", "/v1/models"), 401)
        assert_error(srv.request("POST", "/v1/completions", completion(), key="wrong"), 401)
        status, _, body = srv.request("GET", "/v1/models", key="sesame")
        assert status == 200 and body["data"][0]["id"] == MODEL
        assert srv.server.admin_key == "sesame" and srv.admin_memory("2MB")["applied"]
        assert srv.request("GET", "/health")[0] == 200


def test_only_loopback_without_a_key():
    check_host("127.0.0.1", None)
    check_host("::1", None)
    check_host("localhost", None)
    check_host("0.0.0.0", "key")
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        with pytest.raises(InputError, match="--api-key"):
            check_host(host, None)


PROM_LINE = re.compile(r'^bitstack_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+inf]+$', re.IGNORECASE)


def test_health_models_and_metrics(srv):
    status, _, health = srv.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["weight_resident_bytes"] > 0
    status, _, models = srv.request("GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 256
    assert srv.request("POST", "/v1/completions", completion())[0] == 200
    status, head, text = srv.request("GET", "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all(PROM_LINE.match(line) for line in samples), [s for s in samples if not PROM_LINE.match(s)]
    names = {line.split("{")[0] for line in samples}
    for name in ("weight_resident_bytes", "bits_per_param", "kv_bytes", "queue_length", "running_sequences",
                 "tokens_per_second", "resize_events_total", "requests_total", "memory_target_bytes"):
        assert "bitstack_" + name in names
    assert re.search(r'bitstack_requests_total\{model="[^"]+",endpoint="/v1/completions",status="200"\} [1-9]', text)
    assert re.search(r'bitstack_requests_total\{model="[^"]+",endpoint="/v1/completions",status="400"\} [1-9]', text)
