import time

from bitstack.serve.stats import Histogram, Stats
from bitstack.serve.weights import ResizeEvent


def test_histogram_buckets_are_cumulative():
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        hist.observe(value)
    assert hist.lines("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1.0"} 3', 'x_bucket{le="+Inf"} 4',
                               "x_sum 4.250000", "x_count 4"]


def test_tokens_per_second_is_a_moving_window():
    stats = Stats(window=0.2)
    stats.generated(10)
    assert stats.tokens_per_second() == 50.0
    time.sleep(0.25)
    assert stats.tokens_per_second() == 0.0


def test_prometheus_text_has_every_series_labelled():
    stats = Stats()
    stats.finished("length", 5, 0.3)
    stats.resize(ResizeEvent(time.time(), 100, 50, 0.01))
    stats.response("/v1/completions", 200)
    state = {key: 1 for key in ("target_bytes", "weight_resident_bytes", "weight_allotment_bytes", "weight_floor_bytes",
                                "weight_full_bytes", "bits_per_param", "kv_bytes", "kv_reserved_bytes", "working_bytes",
                                "accounted_bytes", "over_target_bytes", "kv_bytes_per_token", "queue_length",
                                "prefilling", "running", "tokens_per_second")}
    text = stats.prometheus(stats.sample(state), 'a"b')
    assert 'bitstack_resize_events_total{model="a\\"b",direction="shrink"} 1' in text
    assert 'bitstack_sequences_total{model="a\\"b",outcome="length"} 1' in text
    assert 'bitstack_request_latency_seconds_bucket{model="a\\"b",le="0.5"} 1' in text
    assert 'bitstack_request_latency_seconds_count{model="a\\"b"} 1' in text
    assert '# TYPE bitstack_kv_bytes gauge' in text and text.endswith("\n")
    assert len(stats.series()) == 1
