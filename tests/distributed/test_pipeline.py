"""Pipeline placement over two gloo processes (the scenarios are in dist_workers.py)."""

import pytest

from dist_workers import fixture_results, needs_gloo

pytestmark = needs_gloo
CODECS = ("planes", "avd")  # budgets and resizes: the first only (the pipeline never looks at the codec)


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory, tiny_artifact, tiny_avd_artifact):
    return fixture_results(tmp_path_factory, tiny_artifact, tiny_avd_artifact)


@pytest.mark.parametrize("codec", CODECS)
def test_split_logits_equal_one_process(gloo_run, codec):
    parts = [gloo_run[r][f"{codec}/full"] for r in range(2)]
    assert all(p["equal"] for p in parts)
    assert all(p["resident"] == p["measured"] for p in parts)
    assert parts[0]["layers"][0] == 0 and parts[0]["layers"][1] == parts[1]["layers"][0] and parts[1]["layers"][1] == 3


@pytest.mark.parametrize("codec", CODECS)
def test_split_generate_equals_one_process(gloo_run, codec):
    for rank in range(2):
        assert gloo_run[rank][f"{codec}/generate"] == {"cached": True, "uncached": True}


@pytest.mark.parametrize("codec", CODECS[:1])
def test_each_rank_within_its_own_budget(gloo_run, codec):
    for rank in range(2):
        seen = gloo_run[rank][f"{codec}/budget"]
        assert seen == {"fits": True, "longest": True, "equal": True, "partial": True}


@pytest.mark.parametrize("codec", CODECS[:1])
def test_collective_resize_keeps_ranks_consistent(gloo_run, codec):
    seen = [gloo_run[r][f"{codec}/resize"] for r in range(2)]
    assert all(s["fits"] and s["equal"] for s in seen)
    assert seen[0]["reports"] == seen[1]["reports"]  # every rank knows every rank's resize
    assert [r[1] for r in seen[0]["reports"]] == [s["loaded"] for s in seen]
    assert seen[0]["reports"][0][1] > seen[0]["reports"][0][0] and seen[0]["reports"][1][1] < seen[0]["reports"][1][0]


@pytest.mark.parametrize("codec", CODECS[:1])
def test_failed_resize_changes_no_rank(gloo_run, codec):
    for rank in range(2):
        seen = gloo_run[rank]
        kind, message, ours = seen[f"{codec}/below_floor"]
        assert (kind, ours) == ("BudgetError", True) and message.startswith("rank 1: memory budget") and "\n" not in message
        assert seen[f"{codec}/unchanged"] and seen[f"{codec}/after_errors"]
        kind, message, ours = seen[f"{codec}/mismatch"]
        assert (kind, ours) == ("InputError", True) and "every rank must pass the same" in message


@pytest.mark.parametrize("case, kind, words", [
    ("world", "InputError", "3 budget(s) for a world of 2 ranks"),
    ("layers", "InputError", "must be 2 positive counts summing to the model's 3 layers"),
    ("differ", "InputError", "the ranks passed different"),
    ("floor", "BudgetError", "rank 0: memory budget 1.00 kB is below"),
])
def test_bad_specs_are_one_line_errors_on_every_rank(gloo_run, case, kind, words):
    for rank in range(2):
        got_kind, message, ours = gloo_run[rank][f"bad/{case}"]
        assert ours and got_kind == kind and words in message and "\n" not in message, message
