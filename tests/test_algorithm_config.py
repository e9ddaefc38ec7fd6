"""A third-party algorithm declares its own config section: defaults, types, checks and show-config like ours."""
import easyfl
import pytest
import yaml

import fedcmd_plugin
from fedcmd_plugin import registry
from fedcmd_plugin.baselines.common import classification_model
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.server import FederatedServer

SEEN_MU = []  # the proximal weight each client reports it trained with (clients may run in worker processes)


class ProxServer(FederatedServer):
    def round_meta(self):
        return {"mu": self.conf.fedprox.mu}

    def aggregate(self, uploads):
        SEEN_MU.extend(u.meta["mu"] for u in uploads)
        super().aggregate(uploads)


class ProxClient(FederatedClient):
    """FedProx: local loss + mu/2 * ||w - w_global||^2 towards the model the round started from."""

    def pre_train(self):
        self.anchor = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.round_stats["mu"] = self.dispatch.meta["mu"]

    def train_batch(self, x, y, epoch, batch_index):
        prox = sum(((p - self.anchor[name]) ** 2).sum() for name, p in self.model.named_parameters())
        return super().train_batch(x, y, epoch, batch_index) + self.dispatch.meta["mu"] / 2 * prox


@pytest.fixture
def fedprox(monkeypatch):
    """FedProx registered for one test only."""
    monkeypatch.setattr(registry, "_ALGORITHMS", dict(registry.algorithms()))
    SEEN_MU.clear()
    return fedcmd_plugin.register_algorithm(fedcmd_plugin.Algorithm(
        "fedprox", ProxServer, ProxClient, classification_model, "FedProx (test)", config={"fedprox": {"mu": 0.01}}))


def test_declared_section_has_its_defaults_and_reaches_the_algorithm(fedprox, small_digits_config):
    assert fedcmd_plugin.load_config().fedprox.mu == 0.01
    conf = small_digits_config(algorithm="fedprox", fedprox__mu=0.5)
    fedcmd_plugin.register("fedprox")
    easyfl.init(conf)
    easyfl.run()
    assert SEEN_MU and set(SEEN_MU) == {0.5}  # every client of both rounds trained with the configured mu


def test_declared_section_is_checked_like_the_plugins_own(fedprox):
    with pytest.raises(fedcmd_plugin.ConfigError, match=r"'fedprox.muu' is unknown \(did you mean 'fedprox.mu'\?\)"):
        fedcmd_plugin.load_config(None, ["fedprox.muu=0.1"])
    with pytest.raises(fedcmd_plugin.ConfigError, match="'fedprox.mu' expects a number"):
        fedcmd_plugin.load_config(None, ["fedprox.mu=strong"])


def test_declared_section_appears_in_show_config(fedprox, capsys):
    from fedcmd_plugin.cli import main

    from conftest import CONFIGS

    assert main(["show-config", str(CONFIGS / "fedavg_digits.yaml"), "fedprox.mu=0.2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["fedprox"] == {"mu": 0.2}


def test_a_section_cannot_take_an_existing_name(fedprox):
    taken = fedcmd_plugin.Algorithm("other", ProxServer, ProxClient, classification_model, config={"server": {}})
    with pytest.raises(ValueError, match="'server' is already used by the plugin's defaults"):
        fedcmd_plugin.register_algorithm(taken)
    twice = fedcmd_plugin.Algorithm("other", ProxServer, ProxClient, classification_model, config={"fedprox": {}})
    with pytest.raises(ValueError, match="'fedprox' is already used by algorithm 'fedprox'"):
        fedcmd_plugin.register_algorithm(twice)


def test_a_builtin_algorithms_section_is_known_before_its_module_is_imported(monkeypatch):
    """Importing the built-in algorithms costs seconds: load_config does it only for a key nothing else declares."""
    loaded = dict(registry.algorithms())
    imports = []
    monkeypatch.setattr(registry, "_ALGORITHMS", {})
    monkeypatch.setattr(registry, "load_builtins", lambda: (imports.append(1), registry._ALGORITHMS.update(loaded)))
    assert "fedap" not in fedcmd_plugin.load_config(None, ["server.rounds=3"]) and not imports
    assert fedcmd_plugin.load_config(None, ["fedap.model_momentum=0.7"]).fedap.model_momentum == 0.7 and imports
