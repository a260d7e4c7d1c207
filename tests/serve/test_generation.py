"""The OpenAI endpoints through the official ``openai`` client, streaming included, plus what a
client sees under memory pressure (503 + Retry-After) and when it goes away mid-stream."""

from __future__ import annotations

import http.client
import json
import threading

import pytest
from serve.helpers import running, wait_for

openai = pytest.importorskip("openai", reason="the serve tests need the openai client (dev extra)")

MODEL = "tiny-serve.bstk"


@pytest.fixture(scope="module")
def srv(serve_artifact):
    with running(serve_artifact, max_batch=8) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completion_and_its_stream_agree(client):
    full = client.completions.create(model=MODEL, prompt="the cat sat on", max_tokens=9, temperature=0)
    choice = full.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert full.usage.prompt_tokens == 4 and full.usage.completion_tokens == 9 and full.usage.total_tokens == 13
    chunks = list(client.completions.create(model=MODEL, prompt="the cat sat on", max_tokens=9, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9


def test_chat_and_its_stream_agree(client):
    messages = [{"role": "system", "content": "one two"}, {"role": "user", "content": "the dog ran"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=7, temperature=0)
    message = full.choices[0].message
    assert message.role == "assistant" and message.content and full.choices[0].finish_reason == "length"
    assert full.usage.prompt_tokens == 6  # "one two the dog ran you" with the test's template
    stream = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=7, temperature=0,
                                                 stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == message.content
    assert stream[-1].choices[0].finish_reason == "length"


def test_chat_without_max_tokens_is_bounded_by_the_context(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}], temperature=0,
                                           stop=["zzz"], extra_body={"ignore_eos": True, "max_completion_tokens": 5})
    assert reply.usage.completion_tokens == 5


def test_stop_strings_end_the_text_in_both_modes(client):
    text = client.completions.create(model=MODEL, prompt="a big red", max_tokens=12, temperature=0).choices[0].text
    words = text.split()
    assert len(words) >= 4
    stop = " " + words[2]
    cut = text[:text.index(stop)]
    reply = client.completions.create(model=MODEL, prompt="a big red", max_tokens=12, temperature=0, stop=[stop, "qqq"])
    assert reply.choices[0].text == cut and reply.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt="a big red", max_tokens=12, temperature=0, stop=stop,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seed_repeats_a_sampled_completion(client):
    def sample(seed):
        return client.completions.create(model=MODEL, prompt="one two", max_tokens=10, temperature=1.0, top_p=0.95,
                                         seed=seed).choices[0].text
    assert sample(5) == sample(5)
    assert len({sample(s) for s in range(6)}) > 1


def test_token_prompts_and_an_empty_prompt(client):
    by_ids = client.completions.create(model=MODEL, prompt=[4, 5, 6], max_tokens=3, temperature=0)
    assert by_ids.usage.prompt_tokens == 3
    empty = client.completions.create(model=MODEL, prompt="", max_tokens=3, temperature=0)
    assert empty.usage.prompt_tokens == 1  # the tokenizer's BOS


def test_errors_map_to_the_client_exceptions(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", n=2)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True)


def test_concurrent_streams_equal_their_solo_runs(client):
    prompts = ["the cat", "a dog ran to the house", "one", "big small red blue green", "we were", "it is", "i", "he sat"]
    solo = [client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0).choices[0].text
            for p in prompts]
    results = [None] * len(prompts)

    def run(i):
        chunks = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=10, temperature=0, stream=True)
        results[i] = "".join(c.choices[0].text for c in chunks)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo


def test_refused_when_the_floor_and_the_request_do_not_fit(srv, client):
    from bitstack.serve.budget import Request

    engine = srv.server.engine
    small = engine._committed([Request(2, 3)])
    state = srv.admin_memory(engine.weights.floor + small)  # the floor and a small request: no more
    try:
        assert state["target_bytes"] == engine.weights.floor + small
        status, head, body = srv.request("POST", "/v1/completions", {"model": MODEL, "prompt": "the cat", "max_tokens": 200})
        assert status == 503 and int(head["retry-after"]) > 0
        assert body["error"]["code"] == "insufficient_memory" and "retry later" in body["error"]["message"]
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=MODEL, prompt="the cat", max_tokens=200, stream=True)
        assert info.value.status_code == 503
        small = client.completions.create(model=MODEL, prompt="the cat", max_tokens=3, temperature=0)
        assert small.usage.completion_tokens == 3
    finally:
        srv.admin_memory("1GB")
    assert wait_for(lambda: srv.request("GET", "/health")[2]["weight_resident_bytes"] == srv.server.engine.weights.full)


def _kv(srv):
    return srv.request("GET", "/health")[2]


def test_a_client_leaving_mid_stream_frees_its_kv(srv):
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"model": MODEL, "prompt": "the cat", "max_tokens": 240, "temperature": 0, "stream": True, "ignore_eos": True}
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    lines = [response.readline() for _ in range(6)]
    assert lines[0].startswith(b"data: {")
    assert _kv(srv)["kv_bytes"] > 0 and _kv(srv)["running"] == 1
    connection.sock.close()
    connection.close()
    assert wait_for(lambda: _kv(srv)["kv_bytes"] == 0 and _kv(srv)["running"] == 0, timeout=5)
    assert srv.server.engine.stats.outcomes["cancelled"] >= 1
    assert srv.server.engine.stats.generated_tokens < 10_000


def test_a_client_leaving_before_admission_or_a_reply_is_dropped(srv):
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"model": MODEL, "prompt": "the cat", "max_tokens": 240, "temperature": 0, "ignore_eos": True}
    before = srv.server.engine.stats.outcomes["cancelled"]
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert wait_for(lambda: _kv(srv)["running"] == 1, timeout=10)
    connection.sock.close()
    connection.close()
    assert wait_for(lambda: _kv(srv)["kv_bytes"] == 0 and _kv(srv)["running"] == 0, timeout=5)
    assert srv.server.engine.stats.outcomes["cancelled"] == before + 1
