"""One home for configuration: EasyFL's defaults + the plugin's defaults + a YAML file + dotted overrides.

Every key is checked against the defaults, so a typo or a wrong type is a one-line error naming the key,
not a failure deep inside a run.
"""
import difflib
import functools
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from fedcmd_plugin.errors import ConfigError

PLUGIN_DEFAULTS = Path(__file__).with_name("defaults.yaml")
EXTENDS_KEY = "extends"  # a YAML file may start from another one: `extends: base.yaml` (relative to itself)

# Keys EasyFL adds to the config at run time; allowed although no default file declares them.
RUNTIME_KEYS = {
    "is_distributed", "device", "is_remote", "local_port", "server_addr", "tracker_addr", "index", "config",
    "client.task_id", "client.round_id",
}
# Keys whose default is null: the types they accept.
NULLABLE_TYPES = {
    "data.path": (str,),
    "resume": (str,),
    "server.join_ratio": (float,),
    "output.name": (str,),
    "model_init.params_file": (str,),
    "personalization.personal_blocks": (list,),
    "fedcmd.candidate_blocks": (list,),
    "fedcmd.personal_block": (str,),
    "fedcmd.preferred_block": (str,),
    "fedcmd.selection_rounds": (int,),
    "ditto.personal_epochs": (int,),
    "apfl.alpha_lr": (float,),
    "evaluation.sample_clients": (int,),
    "fedureid.target_clusters": (int,),
    "fedureid.pretrained_backbone": (str,),
    "remote.max_message_mb": (float,),
    "remote.tls.ca": (str,),
    "remote.tls.cert": (str,),
    "remote.tls.key": (str,),
}
# Keys that accept more than their default's type.
EXTRA_TYPES = {"output.progress": (str, bool), "parallel.workers": (str, int),
               "distributed.timeout_seconds": (float,)}
CHOICES = {
    "data.split_type": ("iid", "dir", "class", "natural"),
    "data.emnist_split": ("byclass", "bymerge", "balanced", "letters", "digits", "mnist"),
    "test_mode": ("test_in_client", "test_in_server"),
    "test_method": ("weighted", "average"),
    "client.optimizer.type": ("SGD", "Adam"),
    "distributed.backend": ("auto", "gloo", "nccl"),
    "server.aggregation_strategy": ("FedAvg", "equal"),
    "server.aggregation_stragtegy": ("FedAvg", "equal"),  # EasyFL's spelling of the same key
    "output.progress": ("auto", True, False),
    "personalization.similarity_norm": ("sum", "softmax"),
    "fedcmd.distance": ("exact", "mean"),
    "fedcmd.aggregation": ("reference", "round"),
}
POSITIVE = {
    "server.rounds", "server.clients_per_round", "server.test_every", "server.round_timeout", "server.batch_size",
    "client.local_epoch", "client.batch_size", "client.test_batch_size", "data.num_of_clients",
    "data.class_per_client", "data.alpha", "client.straggler_min_local_epoch",
    "fedcmd.max_values", "fedcmd.score_batches", "fedcmd.selection_rounds", "output.similarity_top_k",
    "feddyn.alpha", "ditto.personal_epochs", "fedfomo.models_per_round", "fedap.pretrain_rounds",
    "evaluation.sample_clients", "data.synthetic.features", "data.synthetic.classes", "data.synthetic.mean_samples",
    "fedureid.temperature", "fedureid.embedding_dim",
    "fedureid.patience", "fedureid.target_clusters", "fedureid.synthetic.edges", "fedureid.synthetic.identities",
    "fedureid.synthetic.test_identities", "fedureid.synthetic.cameras", "fedureid.synthetic.images_per_camera",
    "remote.max_message_mb", "remote.max_abs_value", "distributed.timeout_seconds",
}
NON_NEGATIVE = {"client.finetune_epoch", "client.optimizer.lr", "client.optimizer.momentum",
                "client.optimizer.weight_decay", "data.min_size", "gpu", "seed",
                "distributed.world_size", "personalization.body_epochs", "personalization.warmup_rounds",
                "num_threads", "server.save_model_every", "server.checkpoint_every", "fedprox.mu", "ditto.lambda",
                "apfl.alpha_lr", "data.synthetic.alpha", "data.synthetic.beta", "data.synthetic.size_sigma",
                "fedureid.size_penalty", "fedureid.memory_momentum", "fedureid.precision_threshold"}  # world_size 0 is EasyFL's "not distributed"
FRACTIONS = {"data.train_test_split", "server.join_ratio"}  # in (0, 1]
OPEN_FRACTIONS = {"fedfomo.val_ratio"}  # in (0, 1)
UNIT_INTERVAL = {"client.straggler_ratio", "fedureid.ema_beta", "fedureid.merge_percent",
                 "fedureid.precision_saturation", "apfl.alpha", "fedfomo.epsilon", "fedfomo.epsilon_decay",
                 "fedap.model_momentum"}  # in [0, 1]
TRACKING = "the plugin writes metrics to the run folder (output.save_metrics, output.tensorboard)"
HETEROGENEITY = "simulate slow clients with client.straggler_ratio and client.straggler_min_local_epoch"
LEAF = "it applies to EasyFL's LEAF data sets: set data.dataset, data.num_of_clients and data.split_type"
# EasyFL keys whose work the plugin does another way: any value but EasyFL's default is refused with what to use
# instead (a section stands for every key below it).
REPLACED = {
    "task_id": "the run folder is named by output.name",
    "data.data_amount": LEAF,
    "data.iid_fraction": LEAF,
    "data.user": LEAF,
    "data.weights": "client sizes follow the partition: data.split_type=dir with data.alpha and data.balanced",
    "server.track": TRACKING,
    "server.save_model_path": "checkpoints go to the run folder's checkpoints/ (output.root, output.save_model)",
    "server.aggregation_content": "every state entry, BatchNorm statistics included, is aggregated; "
                                  "algorithm fedbn keeps BatchNorm layers on the clients",
    "client.track": TRACKING,
    "client.seed": "clients' seeds derive from the top-level seed, the round and the client: set seed",
    "client.local_test": "set server.test_every=1 to evaluate every client every round",
    "tracking.database": TRACKING,
    "tracking.log_file": "EasyFL's log goes to stdout at tracking.log_level; the run's files go to output.root",
    "tracking.metric_file": TRACKING,
    "tracking.save_every": TRACKING,
    "resource_heterogeneous": HETEROGENEITY,
}


def easyfl_defaults_file():
    """EasyFL's own config.yaml, found without importing easyfl (which costs seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("easyfl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("easyfl is not installed: install the project with `make install` (see README)")
    return Path(list(spec.submodule_search_locations)[0]) / "config.yaml"


@functools.lru_cache(maxsize=1)
def builtin_defaults():
    """EasyFL's defaults with the plugin's defaults merged over them: read and merged once per process (the merge
    costs seconds), so callers only read it; configs get copies (merging and assigning copy OmegaConf nodes)."""
    return OmegaConf.merge(OmegaConf.load(str(easyfl_defaults_file())), OmegaConf.load(str(PLUGIN_DEFAULTS)))


def defaults():
    """The built-in defaults plus the config sections that registered algorithms declare (read-only)."""
    from fedcmd_plugin.registry import algorithm_sections

    sections = algorithm_sections()
    return OmegaConf.merge(builtin_defaults(), sections) if sections else builtin_defaults()


def read_yaml(path, _seen=()):
    """A YAML config file as a dict, following `extends:` chains; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory: name a YAML file in it")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: `{EXTENDS_KEY}` forms a cycle")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start]:#04x}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(tree).__name__}")
    base = tree.pop(EXTENDS_KEY, None)
    if base is None:
        return tree
    parent = read_yaml(path.parent / base, _seen + (path.resolve(),))
    return merge_trees(parent, tree)


def merge_trees(base, update):
    """Recursive dict merge: `update` wins, nested mappings merge."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_arguments(items):
    """Command-line positional arguments: YAML files first, then key.sub=value overrides (for every file)."""
    configs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if not configs:
        raise ConfigError("give at least one config file, e.g. configs/fedavg_digits.yaml")
    return configs, overrides


def parse_overrides(overrides):
    """`a.b=value` strings as a nested dict; values are parsed as YAML scalars (1, 0.5, true, null, [1, 2])."""
    tree = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key below a value")
        node[parts[-1]] = value
    return tree


def load_config(source=None, overrides=()):
    """The full, checked config of one run.

    Args:
        source: a YAML path, a dict, a DictConfig, or None (defaults only).
        overrides: dotted `key.sub=value` strings applied last.
    Returns:
        DictConfig: EasyFL defaults < plugin defaults < source < overrides; pass it to `easyfl.init`.
    """
    if source is None:
        tree = {}
    elif isinstance(source, (str, os.PathLike)):
        tree = read_yaml(source)
    elif isinstance(source, DictConfig):
        tree = OmegaConf.to_container(source)
    elif isinstance(source, dict):
        tree = source
    else:
        raise ConfigError(f"config must be a YAML path or a mapping, got {type(source).__name__}")
    tree = merge_trees(tree, parse_overrides(overrides))
    base = defaults()
    validate(tree, base)
    conf = OmegaConf.merge(base, tree)
    check_values(conf, base)
    return conf


def complete(conf):
    """Fill the plugin's keys missing from a config built by `easyfl.init(dict)` and check it, in place."""
    base = defaults()
    validate(OmegaConf.to_container(conf), base)
    fill_missing(conf, base)
    check_values(conf, base)
    return conf


def fill_missing(conf, base):
    for key in base:
        if key not in conf:
            conf[key] = base[key]
        elif isinstance(base[key], DictConfig) and isinstance(conf[key], DictConfig):
            fill_missing(conf[key], base[key])


def validate(tree, base, prefix=""):
    """Raise ConfigError for unknown keys and wrongly-typed values in `tree`, compared with `base`."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in RUNTIME_KEYS:
            continue
        if key not in base:
            raise ConfigError(f"config key '{dotted}' is unknown{suggestion(key, base, prefix)}")
        expected = base[key]
        if isinstance(expected, DictConfig):
            if not isinstance(value, (dict, DictConfig)):
                raise ConfigError(f"config key '{dotted}' expects a mapping of keys, got {describe(value)}")
            validate(value, expected, dotted + ".")
            continue
        check_type(dotted, value, expected)


def suggestion(key, base, prefix):
    close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f"; keys under '{prefix[:-1] or '<top>'}': {', '.join(sorted(str(k) for k in base))}"


def describe(value):
    return f"{value!r} ({type(value).__name__})"


TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_type(dotted, value, default):
    if value is None:
        if default is None:
            return
        raise ConfigError(f"config key '{dotted}' cannot be null (default: {default!r})")
    if default is None:
        accepted = NULLABLE_TYPES.get(dotted)
    else:
        accepted = EXTRA_TYPES.get(dotted, (list,) if isinstance(default, ListConfig) else (type(default),))
    if accepted is None:
        return
    if float in accepted and isinstance(value, int) and not isinstance(value, bool):
        return
    sequences = (tuple, ListConfig) if list in accepted else ()
    wrong_bool = isinstance(value, bool) and bool not in accepted  # bool is an int to isinstance
    if wrong_bool or not isinstance(value, tuple(accepted) + sequences):
        names = " or ".join(TYPE_NAMES.get(t, t.__name__) for t in accepted)
        raise ConfigError(f"config key '{dotted}' expects {names}, got {describe(value)}")


def check_values(conf, base):
    """Range and choice checks that types alone cannot express, EasyFL keys the plugin replaces, and EasyFL's
    spelling of the aggregation key (`base`: the defaults)."""
    workers = OmegaConf.select(conf, "parallel.workers")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"config key 'parallel.workers' must be auto or an integer >= 1; got {workers!r}")
    for dotted, choices in CHOICES.items():
        value = OmegaConf.select(conf, dotted)
        if value not in choices:
            raise ConfigError(f"config key '{dotted}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    for dotted in POSITIVE | NON_NEGATIVE | FRACTIONS | OPEN_FRACTIONS | UNIT_INTERVAL:
        value = OmegaConf.select(conf, dotted)
        if value is None:
            continue
        if dotted in POSITIVE and not value > 0:
            raise ConfigError(f"config key '{dotted}' must be > 0; got {value!r}")
        if dotted in NON_NEGATIVE and value < 0:
            raise ConfigError(f"config key '{dotted}' must be >= 0; got {value!r}")
        if dotted in FRACTIONS and not 0 < value <= 1:
            raise ConfigError(f"config key '{dotted}' must be in (0, 1]; got {value!r}")
        if dotted in OPEN_FRACTIONS and not 0 < value < 1:
            raise ConfigError(f"config key '{dotted}' must be in (0, 1); got {value!r}")
        if dotted in UNIT_INTERVAL and not 0 <= value <= 1:
            raise ConfigError(f"config key '{dotted}' must be in [0, 1]; got {value!r}")
    for dotted, instead in REPLACED.items():
        for key, value in leaves(OmegaConf.select(conf, dotted), dotted):
            if value != OmegaConf.select(base, key):
                raise ConfigError(f"config key '{key}' is not used by the plugin ({value!r} given): {instead}")
    adopt_easyfl_spelling(conf.server, base.server)


def leaves(node, dotted):
    """(dotted key, value) of every value at or below `node`."""
    if not isinstance(node, DictConfig):
        yield dotted, node
        return
    for key, value in node.items():
        yield from leaves(value, f"{dotted}.{key}")


def adopt_easyfl_spelling(server, defaults):
    """EasyFL 0.1.2 spells the key `aggregation_stragtegy`: a value set there (not EasyFL's default) is
    `aggregation_strategy`'s, and both stay equal so EasyFL and the plugin read the same strategy."""
    if server.aggregation_stragtegy != defaults.aggregation_stragtegy:
        server.aggregation_strategy = server.aggregation_stragtegy
    server.aggregation_stragtegy = server.aggregation_strategy


def active_config():
    """The config EasyFL's coordinator holds after `easyfl.init` (the one the running experiment uses)."""
    from easyfl.coordinator import get_coordinator

    conf = get_coordinator().conf
    if conf is None:
        raise ConfigError("no experiment config: call easyfl.init(config) before building models or data")
    return conf


def to_yaml(conf):
    return yaml.safe_dump(OmegaConf.to_container(conf, resolve=True), sort_keys=False)
