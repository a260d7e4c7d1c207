"""The bitstack model of lm-eval: registered by the adapter, scores what the model scores.
No task data is downloaded: requests are built here."""

import pytest
import torch

import bitstack

pytest.importorskip("lm_eval")


def test_registered_model_scores_what_the_model_scores(tiny_artifact):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from bitstack.evaluation.lm_eval_adapter import register

    register()
    path = tiny_artifact[0]
    lm = get_model("bitstack").create_from_arg_string(f"artifact={path},memory=50kB", {"batch_size": 2, "device": None})
    pairs = [("the cat", " sat on"), ("a dog", " ran to the house")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    scores = [score for score, _ in lm.loglikelihood(requests)]
    model, tokenizer = bitstack.load(path, "50kB", device="cpu"), bitstack.load_tokenizer(path)
    assert lm.model.bitstack.loaded == model.bitstack.loaded
    for (context, continuation), score in zip(pairs, scores):
        ctx = tokenizer(context, add_special_tokens=False).input_ids
        cont = tokenizer(continuation, add_special_tokens=False).input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits.float(), -1)[0]
        expected = sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-4)


def test_hf_model_loads_an_exported_folder(tiny_artifact, tmp_path):
    """``--model hf --model_args pretrained=FOLDER`` goes through the transformers quantizer."""
    from lm_eval.api.registry import get_model

    from bitstack.evaluation.lm_eval_adapter import register
    from bitstack.integrations.export import ExportConfig, export

    register()
    export(tiny_artifact[0], tmp_path / "art", ExportConfig(format="bitstack-hf", memory="50kB"))
    lm = get_model("hf").create_from_arg_string(f"pretrained={tmp_path / 'art'},device=cpu", {"batch_size": 1})
    assert lm.model.bitstack.loaded == bitstack.load(tiny_artifact[0], "50kB", device="cpu").bitstack.loaded


def test_lm_eval_command_line_runs_a_local_task(tiny_artifact, tmp_path):
    """``python -m bitstack.evaluation.lm_eval_adapter`` is lm-eval's command line with the model
    registered; the task reads a local JSON file (no download: offline mode)."""
    import json
    import os
    import subprocess
    import sys

    rows = [{"question": "the cat sat on the", "choices": ["mat", "dog"], "label": 0},
            {"question": "one two three", "choices": ["four", "red"], "label": 0}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "local.yaml").write_text(
        "task: bitstack_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bitstack.evaluation.lm_eval_adapter", "--model", "bitstack",
                          "--model_args", f"artifact={tiny_artifact[0]},memory=50kB", "--device", "cpu",
                          "--tasks", "bitstack_local", "--include_path", str(tmp_path),
                          "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results*.json")]
    assert results and "acc,none" in results[0]["results"]["bitstack_local"]
