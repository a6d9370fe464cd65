"""verify's models hold one decoder layer at a time (``bake.verify.tensor_model``): the hooked reference streamed
from the base's safetensors gives the in-memory reference's logits and greedy tokens, bf16 bases and the real
28 x 3072 gate shape included, and no more than one layer's weights exist while it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.verify.candidates import TorchRunner
from bake.verify.reference import load_hooked_model, streamed_hooked_model

SETTINGS = GateSettings(Cut("preset", 3), "hard", "energy")


def _scale(gates: Path, layers: int, width: int) -> torch.Tensor:
    v = load_variant(gates, "chat_energy_optA", num_layers=layers, intermediate_size=width)
    return compute_gates(v.logits, SETTINGS, v.selected_thresholds).scale


@pytest.mark.parametrize("base", ["tiny_base", "tiny_base_bf16", "full_base_bf16"])
def test_streamed_reference_equals_the_in_memory_one(base: str, tiny_gates: Path, full_gates: Path,
                                                     request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(base)
    full = base.startswith("full")
    scale = _scale(full_gates if full else tiny_gates, 28 if full else 4, 3072 if full else 128)
    prompts = [[5, 17, 99, 3, 250, 41, 8], [12, 300, 7]]
    want_seq, want = TorchRunner(load_hooked_model(folder, scale)).generate(prompts, 5)
    got_seq, got = TorchRunner(streamed_hooked_model(folder, scale)).generate(prompts, 5)
    assert got_seq == want_seq
    for i in range(len(prompts)):
        assert torch.equal(got.of(i)[0], want.of(i)[0])
    seqs = want_seq.inputs
    for a, b in zip(TorchRunner(streamed_hooked_model(folder, scale)).score(seqs),
                    TorchRunner(load_hooked_model(folder, scale)).score(seqs)):
        assert torch.equal(a, b)


def test_one_layer_in_memory_at_a_time(tiny_base: Path, tiny_gates: Path) -> None:
    model = streamed_hooked_model(tiny_base, _scale(tiny_gates, 4, 128))
    layers = list(model.model.layers)
    assert all(p.is_meta for layer in layers for p in layer.parameters())  # nothing read before it runs
    seen: list[int] = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda *_: seen.append(
            sum(not p.is_meta for other in layers for p in other.parameters())))
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]]))
    per_layer = sum(1 for _ in layers[0].parameters())
    assert seen == [per_layer] * len(layers)  # its own weights only, read just before it runs
    assert all(p.is_meta for layer in layers for p in layer.parameters())  # and dropped after


def test_batched_scoring_reads_each_layer_once_and_gives_each_sequence_its_own_logits(tiny_base: Path,
                                                                                      tiny_gates: Path) -> None:
    from bake.verify import candidates

    scale = _scale(tiny_gates, 4, 128)
    seqs = [[5, 17, 99, 3, 250, 41, 8], [12, 300, 7], [9] * 20, [4, 4]]
    model = streamed_hooked_model(tiny_base, scale)
    loads: list[int] = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: loads.append(1))
    batched = list(TorchRunner(model).score(seqs))
    assert len(loads) == 1  # all four sequences in one pass
    alone = TorchRunner(load_hooked_model(tiny_base, scale))
    for s, got in zip(seqs, batched):
        (want,) = alone.score([s])
        assert got.shape == (len(s), want.shape[-1])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the padding after it changes nothing
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert [len(g) for g in candidates._passes([[1] * 600, [1] * 400, [1] * 100, [1] * 2000, [1]])] == [1, 2, 1, 1]


def test_reused_arrays_are_handed_out_again_only_once_free():
    """A decoder layer's tensor is widened into the array the previous layer's same tensor used, once nothing else
    holds it; a held one, another shape or a top tensor gets a new array."""
    from bake.verify.tensor_model import Reused

    reused = Reused()
    assert reused.array("model.embed_tokens.weight", (4, 2)) is None
    first = reused.array("model.layers.0.mlp.up_proj.weight", (6, 4))
    held = first  # a layer still holds it
    assert reused.array("model.layers.1.mlp.up_proj.weight", (6, 4)) is not held
    second = reused.array("model.layers.2.mlp.up_proj.weight", (6, 4))
    del first, held
    address = second.__array_interface__["data"][0]
    del second  # the layer that used it was dropped
    again = reused.array("model.layers.3.mlp.up_proj.weight", (6, 4))
    assert again.__array_interface__["data"][0] == address
    del again
    assert reused.array("model.layers.4.mlp.up_proj.weight", (5, 4)).shape == (5, 4)  # a ragged layer: new
    assert reused.array("model.layers.4.mlp.down_proj.weight", (6, 4)) is not None


def test_scoring_side_by_side_leaves_gradients_on(tiny_base: Path, tiny_gates: Path) -> None:
    """Two scoring generators run together (as verify and the tests compare models) and one left unfinished: the
    caller's gradient mode is untouched (a generator that yields inside no_grad would turn it off for good)."""
    scale = _scale(tiny_gates, 4, 128)
    seqs = [[5, 17, 99], [12, 300, 7, 8]]
    a = TorchRunner(streamed_hooked_model(tiny_base, scale)).score(seqs)
    b = TorchRunner(load_hooked_model(tiny_base, scale)).score(seqs)
    next(a), next(b)
    assert torch.is_grad_enabled()
    list(a), list(b)
    unfinished = TorchRunner(load_hooked_model(tiny_base, scale)).score(seqs)
    next(unfinished)
    assert torch.is_grad_enabled()
