"""Budgets as users write them: bits per parameter, a budget a byte below the floor, a budget
above the whole stack."""

import json

import pytest

import bitstack
from bitstack.cli import main
from bitstack.errors import BudgetError
from bitstack.runtime.budget import base_bytes_at, memory_bytes
from bitstack.runtime.report import budget_note, memory_report


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("bits", [1.0, 2.5, 3.5])
def test_bits_per_param_is_the_same_budget_as_its_bytes(bits, tiny_artifact):
    path, _, _ = tiny_artifact
    model = bitstack.load(path, f"{bits}bits", device="cpu", dtype="bfloat16")
    manifest = model.bitstack.manifest
    import torch

    budget = base_bytes_at(manifest, torch.bfloat16) + int(bits * manifest.decomposed_params() / 8)
    same = bitstack.load(path, budget, device="cpu", dtype="bfloat16")
    assert model.bitstack.budget == budget and model.bitstack.loaded == same.bitstack.loaded
    assert memory_report(model)["bits_per_param"] <= bits
    model.bitstack.resize("99bits")
    assert model.bitstack.loaded == len(manifest.stack)
    model.bitstack.resize(f"{bits}bits")  # a resize takes the same budgets
    assert model.bitstack.loaded == same.bitstack.loaded


def test_a_budget_one_byte_below_the_floor_names_both_in_bytes(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    floor = m["prefix_bytes"][m["floor_blocks"]]
    with pytest.raises(BudgetError, match=rf"budget {floor - 1} bytes is below this artifact's floor of {floor} bytes"):
        bitstack.load(path, floor - 1, device="cpu")


def test_a_budget_above_the_whole_stack_is_reported(tiny_artifact, capsys):
    path, _, _ = tiny_artifact
    model = bitstack.load(path, "99999TB", device="cpu")
    assert "99999" in budget_note(model) and "every block is loaded" in budget_note(model)
    assert budget_note(bitstack.load(path, memory_bytes(model), device="cpu")) is None
    assert main(["generate", str(path), "--memory", "99999TB", "--prompt", "the cat", "--max-new-tokens", "2",
                 "--device", "cpu"]) == 0
    assert "more than the whole stack needs" in capsys.readouterr().err
