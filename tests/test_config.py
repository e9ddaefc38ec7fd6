"""Config loading: `extends:` chains, dotted overrides, and one-line errors naming the key or file."""
import pytest
from omegaconf import DictConfig, OmegaConf

from fedcmd_plugin import ConfigError, load_config
from fedcmd_plugin.config import parse_overrides, read_yaml

from conftest import CONFIGS


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_merge_easyfl_and_plugin_keys():
    conf = load_config()
    assert isinstance(conf, DictConfig)
    assert conf.algorithm == "fedavg" and conf.data.dataset == "digits"
    assert "aggregation_stragtegy" in conf.server  # an EasyFL key the plugin does not declare itself
    assert conf.client.optimizer.type == "SGD"


def test_extends_chain_merges_nested_keys(tmp_path):
    write(tmp_path / "shared" / "root.yaml", "data: {dataset: digits, alpha: 0.3, num_of_clients: 12}\n"
                                             "client: {optimizer: {lr: 0.2, momentum: 0.5}}\nseed: 4\n")
    write(tmp_path / "shared" / "middle.yaml", "extends: root.yaml\ndata: {alpha: 0.7}\nserver: {rounds: 3}\n")
    leaf = write(tmp_path / "exp" / "leaf.yaml", "extends: ../shared/middle.yaml\nclient: {optimizer: {lr: 0.05}}\n"
                                                  "algorithm: local\n")
    conf = load_config(leaf)
    assert conf.algorithm == "local"
    assert conf.data.alpha == 0.7 and conf.data.num_of_clients == 12 and conf.data.dataset == "digits"
    assert conf.client.optimizer.lr == 0.05 and conf.client.optimizer.momentum == 0.5
    assert conf.server.rounds == 3 and conf.seed == 4
    assert conf.server.clients_per_round == 10  # untouched keys keep the defaults


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_extends_missing_parent_names_it(tmp_path):
    write(tmp_path / "a.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(tmp_path / "a.yaml")


def test_shipped_configs_load():
    conf = load_config(CONFIGS / "fedavg_digits.yaml")
    assert conf.algorithm == "fedavg" and conf.data.dataset == "digits"
    assert conf.client.optimizer.lr == 0.05 and conf.data.train_test_split == 0.5  # digits.yaml over base.yaml
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert isinstance(load_config(path), DictConfig), path


def test_overrides_parse_as_yaml_scalars():
    tree = parse_overrides(["a.b=1", "a.c=0.5", "d=true", "e=null", "f=[1, 2]", "g=hello", "h.i.j=x=y", "k="])
    assert tree == {"a": {"b": 1, "c": 0.5}, "d": True, "e": None, "f": [1, 2], "g": "hello",
                    "h": {"i": {"j": "x=y"}}, "k": ""}
    assert isinstance(tree["a"]["b"], int) and isinstance(tree["a"]["c"], float)


@pytest.mark.parametrize("bad", ["noequals", "=3"])
def test_malformed_override_is_an_error(bad):
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides([bad])


def test_overrides_win_over_the_file():
    conf = load_config(CONFIGS / "fedavg_digits.yaml",
                       ["server.rounds=3", "client.optimizer.lr=0.2", "data.split_type=iid", "output.name=x"])
    assert conf.server.rounds == 3 and conf.client.optimizer.lr == 0.2
    assert conf.data.split_type == "iid" and conf.output.name == "x"
    assert conf.data.num_of_clients == 20  # from digits.yaml, untouched


def test_integer_accepted_where_a_number_is_expected():
    assert load_config(None, ["client.optimizer.lr=1"]).client.optimizer.lr == 1
    assert load_config(None, ["distributed.timeout_seconds=2.5"]).distributed.timeout_seconds == 2.5


@pytest.mark.parametrize("override,unknown,close", [
    ("server.roundz=3", "server.roundz", "server.rounds"),
    ("client.optimiser.lr=3", "client.optimiser", "client.optimizer"),
    ("datta.alpha=3", "datta", "data"),
])
def test_unknown_key_names_it_and_suggests(override, unknown, close):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    message = str(caught.value)
    assert f"'{unknown}' is unknown" in message
    assert f"did you mean '{close}'" in message
    assert "\n" not in message


def test_unknown_key_without_close_match_lists_the_keys():
    with pytest.raises(ConfigError) as caught:
        load_config({"server": {"qqqqqq": 1}})
    assert "'server.qqqqqq'" in str(caught.value) and "rounds" in str(caught.value)


@pytest.mark.parametrize("override,key,expected", [
    ("client.batch_size=abc", "client.batch_size", "an integer"),
    ("client.batch_size=2.5", "client.batch_size", "an integer"),
    ("server.rounds=true", "server.rounds", "an integer"),
    ("data.alpha=much", "data.alpha", "a number"),
    ("output.save_model=3", "output.save_model", "true/false"),
    ("data=5", "data", "mapping"),
    ("server.rounds=null", "server.rounds", "null"),
    ("distributed.timeout_seconds=soon", "distributed.timeout_seconds", "a number"),
    ("resume=7", "resume", "a string"),
])
def test_wrong_type_names_key_and_expectation(override, key, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    message = str(caught.value)
    assert f"'{key}'" in message and expected in message


@pytest.mark.parametrize("override,key,expected", [
    ("data.train_test_split=1.5", "data.train_test_split", "(0, 1]"),
    ("data.train_test_split=0", "data.train_test_split", "(0, 1]"),
    ("server.rounds=0", "server.rounds", "> 0"),
    ("data.alpha=-1", "data.alpha", "> 0"),
    ("client.optimizer.lr=-0.1", "client.optimizer.lr", ">= 0"),
    ("client.straggler_ratio=2", "client.straggler_ratio", "[0, 1]"),
    ("data.split_type=random", "data.split_type", "iid, dir, class"),
    ("client.optimizer.type=RMSprop", "client.optimizer.type", "SGD, Adam"),
    ("distributed.timeout_seconds=0", "distributed.timeout_seconds", "> 0"),
    ("server.checkpoint_every=-1", "server.checkpoint_every", ">= 0"),
])
def test_out_of_range_values_name_key_and_range(override, key, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    message = str(caught.value)
    assert f"'{key}'" in message and expected in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "data:\n  dataset: digits\n  alpha: [0.1, 0.2\nserver: {rounds: 2}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "broken.yaml" in message
    assert "line 4" in message  # the unclosed list runs into the next key


def test_yaml_error_on_a_given_line(tmp_path):
    path = write(tmp_path / "tabs.yaml", "seed: 1\nserver:\n\trounds: 2\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml.*line 3"):
        load_config(path)


def test_config_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("output:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text \(byte 19: 0xe9\)"):
        load_config(latin1)
    with pytest.raises(ConfigError):
        load_config(42)


def test_read_yaml_keeps_unknown_top_level_for_validation(tmp_path):
    path = write(tmp_path / "x.yaml", "bogus: 1\n")
    assert read_yaml(path) == {"bogus": 1}
    with pytest.raises(ConfigError, match="'bogus'"):
        load_config(path)


def test_small_digits_config_fixture(small_digits_config, tmp_run_dir):
    conf = small_digits_config(server__rounds=3, **{"data.alpha": 0.5})
    assert conf.server.rounds == 3 and conf.data.alpha == 0.5 and conf.data.dataset == "digits"
    assert conf.output.root == str(tmp_run_dir.output_root) and conf.data.root == str(tmp_run_dir.data_root)
    with pytest.raises(ConfigError, match="server.roundz"):
        small_digits_config(server__roundz=3)


def test_easyfl_spelling_of_the_aggregation_key_is_the_plugins_key():
    conf = load_config(None, ["server.aggregation_stragtegy=equal"])
    assert conf.server.aggregation_strategy == "equal" and conf.server.aggregation_stragtegy == "equal"
    conf = load_config(None, ["server.aggregation_strategy=equal"])
    assert conf.server.aggregation_stragtegy == "equal"  # EasyFL reads the same strategy


def test_easyfl_spelling_through_easyfl_init_dict():
    """`easyfl.init(dict)` merges over EasyFL's own defaults; completing that config translates the key too."""
    from omegaconf import OmegaConf

    from fedcmd_plugin.config import complete, easyfl_defaults_file

    conf = OmegaConf.merge(OmegaConf.load(str(easyfl_defaults_file())), {"server": {"aggregation_stragtegy": "equal"}})
    assert complete(conf).server.aggregation_strategy == "equal"


def test_easyfl_spelling_is_validated_like_the_plugins_key():
    with pytest.raises(ConfigError, match=r"'server.aggregation_stragtegy' must be one of FedAvg, equal"):
        load_config(None, ["server.aggregation_stragtegy=median"])


@pytest.mark.parametrize("override,instead", [
    ("task_id=exp1", "output.name"),
    ("data.data_amount=0.5", "data.split_type"),
    ("data.iid_fraction=0.5", "data.split_type"),
    ("data.user=true", "data.split_type"),
    ("data.weights=[0.5, 0.5]", "data.split_type"),
    ("server.track=true", "output.save_metrics"),
    ("server.save_model_path=models", "output.save_model"),
    ("server.aggregation_content=parameters", "fedbn"),
    ("client.track=true", "output.save_metrics"),
    ("client.seed=3", "seed"),
    ("client.local_test=true", "server.test_every"),
    ("tracking.database=db.sqlite", "output.save_metrics"),
    ("tracking.log_file=train.log", "tracking.log_level"),
    ("tracking.metric_file=metrics.csv", "output.save_metrics"),
    ("tracking.save_every=5", "output.save_metrics"),
    ("resource_heterogeneous.simulate=true", "client.straggler_ratio"),
    ("resource_heterogeneous.level=1", "client.straggler_ratio"),
])
def test_easyfl_keys_the_plugin_replaces_are_refused_with_what_to_use(override, instead):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    message = str(caught.value)
    assert f"'{override.partition('=')[0]}'" in message and instead in message and "\n" not in message


def test_test_mode_is_checked():
    with pytest.raises(ConfigError, match="'test_mode' must be one of test_in_client, test_in_server"):
        load_config(None, ["test_mode=test_in_cloud"])


def test_configs_never_share_state_with_the_cached_defaults():
    """The defaults are read once per process: changing one loaded or completed config changes no later one."""
    from fedcmd_plugin.config import complete

    first = load_config(None)
    first.server.rounds = 12345
    first.fedcmd.candidate_blocks = ["fc1"]
    partial = OmegaConf.create({"algorithm": "fedavg"})
    complete(partial)
    partial.fedcmd.distance = "mean"
    again = load_config(None)
    assert again.server.rounds != 12345 and again.fedcmd.candidate_blocks is None
    assert again.fedcmd.distance == "exact" and complete(OmegaConf.create({})).fedcmd.distance == "exact"
