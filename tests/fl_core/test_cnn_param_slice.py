"""`fl_core.params.cnn_param_slice`: where each CNN parameter sits in the flat vector, the
one lookup FoolsGold, FLDetector, DeepSight and FreqFed read their layer with."""

from __future__ import annotations

import pytest
import torch

from fl_core.aggregators.deepsight import output_layer
from fl_core.aggregators.foolsgold import output_layer_size
from fl_core.models import CNN
from fl_core.params import cnn_param_slice, get_flat


def test_every_parameter_is_found_where_get_flat_puts_it():
    model = CNN()
    flat = get_flat(model)
    for name, param in model.named_parameters():
        off, shape = cnn_param_slice(name)
        assert shape == param.shape
        assert torch.equal(flat[off: off + param.numel()].view(shape), param.detach())


def test_output_layer_readers_agree_with_the_model():
    model = CNN()
    flat = get_flat(model)
    assert output_layer_size() == model.fc2.weight.numel() + model.fc2.bias.numel() == 1290
    w, b = output_layer(torch.stack([flat, 2 * flat]))
    assert torch.equal(w[0], model.fc2.weight.detach().double())
    assert torch.equal(b[1], 2 * model.fc2.bias.detach().double())


def test_unknown_name_lists_the_parameters():
    with pytest.raises(KeyError, match="fc2.weight"):
        cnn_param_slice("fc3.weight")
