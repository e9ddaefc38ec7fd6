"""Model shapes, block outputs and the key -> block mapping the personalized-layer machinery relies on."""
import pytest
import torch
from torch import nn

from fedcmd_plugin.errors import ConfigError
from fedcmd_plugin.models import MODELS, BlockNet, LeNet5, SmallCNN, build_model, register_model_builder
from fedcmd_plugin.personalized.layers import bn_keys, keys_of_blocks, split_keys

SHAPES = [(1, 8), (1, 28), (3, 32), (3, 8), (1, 32), (3, 28)]


@pytest.mark.parametrize("name", ["lenet5", "lenet5_bn", "cnn"])
@pytest.mark.parametrize("channels,size", SHAPES)
def test_logits_shape(name, channels, size):
    model = build_model(name, in_channels=channels, num_classes=7, image_size=size)
    assert model(torch.randn(4, channels, size, size)).shape == (4, 7)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_bn", "cnn"])
def test_return_blocks_matches_plain_forward(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=5, image_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, outputs = model(x, return_blocks=True)
    assert len(outputs) == len(model.block_names)
    assert torch.equal(outputs[-1], logits)
    assert torch.equal(model(x), logits)
    assert all(out.shape[0] == 3 for out in outputs)


def test_block_outputs_are_each_blocks_output():
    model = LeNet5(image_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    _, outputs = model(x, return_blocks=True)
    expected = x
    for block, output in zip(model.blocks.values(), outputs):
        expected = block(expected)
        assert torch.equal(output, expected)


def test_lenet_block_names_and_padding():
    model = LeNet5(image_size=8)
    assert model.block_names == ["conv1", "conv2", "fc1", "fc2", "classifier"]
    assert model.blocks.conv1[0].padding == (2, 2)
    assert LeNet5(image_size=28).blocks.conv1[0].padding == (0, 0)
    assert LeNet5(image_size=32).blocks.fc1[1].in_features == 16 * 5 * 5


@pytest.mark.parametrize("name", ["lenet5", "lenet5_bn", "cnn"])
def test_block_of_maps_every_state_key(name):
    model = build_model(name, in_channels=1, num_classes=10, image_size=28)
    owners = {key: model.block_of(key) for key in model.state_dict()}
    assert set(owners.values()) == set(model.block_names)
    for key, block in owners.items():
        assert key.startswith(f"blocks.{block}.")


def test_block_of_examples_and_unknown_key():
    model = LeNet5(batch_norm=True)
    assert model.block_of("blocks.fc1.1.weight") == "fc1"
    assert model.block_of("blocks.conv2.1.running_mean") == "conv2"
    assert model.block_of("module.blocks.classifier.bias") == "classifier"
    with pytest.raises(KeyError):
        model.block_of("blocks.nothing.weight")


def test_cnn_has_batch_norm_and_more_blocks():
    model = SmallCNN()
    assert len(model.block_names) > len(LeNet5().block_names)
    keys = bn_keys(model)
    assert keys and all(model.block_of(key).startswith("conv") for key in keys)
    assert any(key.endswith("num_batches_tracked") for key in keys)
    assert not bn_keys(LeNet5())


def test_unknown_model_names_the_key_and_known_names():
    with pytest.raises(ConfigError, match=r"model.*'resnet999'.*cnn, lenet5, lenet5_bn"):
        build_model("resnet999", 1, 10, 28)


def test_too_small_image_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size"):
        LeNet5(image_size=2)


def test_registry_is_open_but_names_are_not_reused():
    class Tiny(BlockNet):
        def __init__(self, in_channels, num_classes, image_size):
            super().__init__([("classifier", nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)))])

    register_model_builder("tiny_test", Tiny)
    try:
        assert isinstance(build_model("tiny_test", 1, 3, 8), Tiny)
        with pytest.raises(ValueError):
            register_model_builder("tiny_test", LeNet5)
    finally:
        del MODELS["tiny_test"]


def test_block_net_requires_classifier_last():
    with pytest.raises(ValueError):
        BlockNet([("fc", nn.Linear(2, 2))])


def test_split_keys_partitions_in_block_order():
    model = LeNet5(batch_norm=True)
    before, personal, after = split_keys(model, model.block_of, model.block_names, "fc1")
    assert {model.block_of(k) for k in before} == {"conv1", "conv2"}
    assert personal == ["blocks.fc1.1.weight", "blocks.fc1.1.bias"]
    assert {model.block_of(k) for k in after} == {"fc2", "classifier"}
    assert sorted(before + personal + after) == sorted(model.state_dict())
    positions = [model.block_names.index(model.block_of(k)) for k in before + personal + after]
    assert positions == sorted(positions)
    reordered = list(reversed(list(model.state_dict())))
    assert keys_of_blocks(reordered, model.block_of, ["conv1", "classifier"])[0].startswith("blocks.conv1.")
    with pytest.raises(ValueError):
        split_keys(model, model.block_of, model.block_names, "fc9")
