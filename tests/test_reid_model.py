"""ReID network (shapes, unit-norm features, local pretrained weights) and the cluster memory it trains with."""
import pytest
import torch
import torchvision

from fedcmd_plugin.errors import ConfigError, DataError
from fedcmd_plugin.fedureid.memory import ClusterMemory
from fedcmd_plugin.models.reid import ReidNet


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_features_are_unit_norm_embeddings(backbone):
    torch.manual_seed(0)
    model = ReidNet(backbone, embedding_dim=24).eval()
    features = model(torch.randn(3, 3, 64, 32))
    assert features.shape == (3, 24)
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)


def test_small_backbone_trains_and_every_key_is_aggregated():
    torch.manual_seed(0)
    model = ReidNet("small", embedding_dim=16)
    model(torch.randn(4, 3, 64, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    keys = model.aggregated_keys()
    assert keys == list(model.state_dict())
    assert any(k.startswith("backbone.") for k in keys) and any(k.startswith("embedding.") for k in keys)


def test_missing_pretrained_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model_init.params_file .*missing.pth does not exist"):
        ReidNet("resnet18", pretrained_path=tmp_path / "missing.pth")


def test_pretrained_weights_load_and_mismatches_are_reported(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)  # stands in for a local ImageNet file
    good = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), good)
    model = ReidNet("resnet18", pretrained_path=good)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)

    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not fit the backbone"):
        ReidNet("resnet18", pretrained_path=wrong)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet34"):
        ReidNet("resnet34")


def test_memory_loss_pulls_features_to_their_cluster():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    memory = ClusterMemory(3, 8).rebuild(features, labels)
    assert memory.num_clusters == 3
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(memory.vectors, torch.nn.functional.normalize(means, dim=1), atol=1e-6)

    own = torch.nn.functional.normalize(means, dim=1)[labels]
    wrong = own[[2, 2, 4, 4, 0, 0]]
    assert memory.loss(own, labels) < memory.loss(wrong, labels)
    scaled = memory.loss(own, labels)  # cosine 1 on the right vector, scaled by 1 / 0.1 = 10
    assert scaled < ClusterMemory(3, 8, temperature=1.0).rebuild(features, labels).loss(own, labels)


def test_memory_update_is_a_renormalised_moving_average():
    memory = ClusterMemory(2, 2, momentum=0.5)
    memory.vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    memory.update(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]))
    expected = torch.nn.functional.normalize(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), dim=1)
    assert torch.allclose(memory.vectors, expected)


def test_memory_rejects_bad_settings_and_labels():
    with pytest.raises(ConfigError, match="temperature"):
        ClusterMemory(3, 4, temperature=10)
    memory = ClusterMemory(3, 4)
    with pytest.raises(DataError, match="0..2"):
        memory.loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(DataError, match="contiguous"):
        memory.rebuild(torch.randn(3, 4), torch.tensor([0, 2, 2]))
