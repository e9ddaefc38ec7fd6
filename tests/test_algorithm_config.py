"""A third-party algorithm declares its own config section: defaults, types, checks and show-config like ours."""
from dataclasses import dataclass

import easyfl
import pytest
import yaml

import fedcmd_plugin
from fedcmd_plugin import registry
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.messages import Report, Settings
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import classification_model

SEEN = []  # the setting each client reports it trained with (clients may run in worker processes)


@dataclass(frozen=True)
class DemoSettings(Settings):
    strength: float


@dataclass(frozen=True)
class DemoReport(Report):
    strength: float


class DemoServer(FederatedServer):
    def algorithm_settings(self):
        return DemoSettings(float(self.conf.demo.strength))

    def aggregate(self, uploads):
        SEEN.extend(u.algorithm.strength for u in uploads)
        super().aggregate(uploads)


class DemoClient(FederatedClient):
    """Trains as FedAvg does and reports the setting the server handed it."""
    settings_type = DemoSettings
    report_type = DemoReport

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        upload.algorithm = DemoReport(dispatch.algorithm.strength)
        return upload


@pytest.fixture
def demo(monkeypatch):
    """A third-party algorithm with its own config section, registered for one test only."""
    monkeypatch.setattr(registry, "_ALGORITHMS", dict(registry.algorithms()))
    SEEN.clear()
    return fedcmd_plugin.register_algorithm(fedcmd_plugin.Algorithm(
        "demo", DemoServer, DemoClient, classification_model, "demo (test)", config={"demo": {"strength": 0.01}}))


def test_declared_section_has_its_defaults_and_reaches_the_algorithm(demo, small_digits_config):
    assert fedcmd_plugin.load_config().demo.strength == 0.01
    conf = small_digits_config(algorithm="demo", demo__strength=0.5, server__rounds=1)
    fedcmd_plugin.register("demo")
    easyfl.init(conf)
    easyfl.run()
    assert len(SEEN) == 5 and set(SEEN) == {0.5}  # every client of the round trained with the configured value


def test_declared_section_is_checked_like_the_plugins_own(demo):
    unknown = r"'demo.strenght' is unknown \(did you mean 'demo.strength'\?\)"
    with pytest.raises(fedcmd_plugin.ConfigError, match=unknown):
        fedcmd_plugin.load_config(None, ["demo.strenght=0.1"])
    with pytest.raises(fedcmd_plugin.ConfigError, match="'demo.strength' expects a number"):
        fedcmd_plugin.load_config(None, ["demo.strength=strong"])


def test_declared_section_appears_in_show_config(demo, capsys):
    from conftest import CONFIGS

    from fedcmd_plugin.cli import main

    assert main(["show-config", str(CONFIGS / "fedavg_digits.yaml"), "demo.strength=0.2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["demo"] == {"strength": 0.2}


def test_a_section_cannot_take_an_existing_name(demo):
    for section in ("server", "fedprox"):  # the built-in algorithms' sections are the plugin's defaults too
        taken = fedcmd_plugin.Algorithm("other", DemoServer, DemoClient, classification_model, config={section: {}})
        with pytest.raises(ValueError, match=f"'{section}' is already used by the plugin's defaults"):
            fedcmd_plugin.register_algorithm(taken)
    twice = fedcmd_plugin.Algorithm("other", DemoServer, DemoClient, classification_model, config={"demo": {}})
    with pytest.raises(ValueError, match="'demo' is already used by algorithm 'demo'"):
        fedcmd_plugin.register_algorithm(twice)

