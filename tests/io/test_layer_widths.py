"""Each layer's MLP width in config.json: lambda-bake writes transformers' ``per_layer_config`` exactly as
transformers serializes it and reads it back, whatever the layer count (keys are zero-padded past 9 layers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bake.errors import BaseModelError
from bake.io.base_model import layer_widths, per_layer_config


@pytest.mark.parametrize("layers", [1, 4, 12, 28, 36])
def test_per_layer_config_is_what_transformers_writes(layers: int) -> None:
    from transformers import Qwen3Config

    rng = np.random.default_rng(layers)
    for _ in range(5):
        widths = [int(w) for w in rng.choice([64, 128, 192, 3072], size=layers)]
        ours = per_layer_config(widths)
        config = Qwen3Config(num_hidden_layers=layers, intermediate_size=max(widths), per_layer_config=ours)
        if ours:
            assert config.to_dict()["per_layer_config"] == ours
        assert layer_widths({"num_hidden_layers": layers, "intermediate_size": max(widths),
                             "per_layer_config": ours}, Path("config.json")) == widths
        if len(set(widths)) > 1:
            assert [config.per_layer_config[i].intermediate_size for i in range(layers)] == widths
    assert per_layer_config([96] * layers) == {}  # one width: a stock config


def test_an_unpadded_key_reads_as_its_layer_and_a_repeated_one_is_refused() -> None:
    config = {"num_hidden_layers": 12, "intermediate_size": 64, "per_layer_config": {"3": {"intermediate_size": 32}}}
    assert layer_widths(config, Path("c.json"))[3] == 32
    config["per_layer_config"]["03"] = {"intermediate_size": 16}
    with pytest.raises(BaseModelError, match=r"c.json: per_layer_config gives layer 3 twice \('3' and '03'\)"):
        layer_widths(config, Path("c.json"))
