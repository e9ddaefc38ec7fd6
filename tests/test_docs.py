"""The README's config reference covers every key of the plugin's defaults, with the default shown."""
import re
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def leaves(node, prefix=""):
    for key, value in node.items():
        if OmegaConf.is_dict(value):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_default_key_is_documented_with_its_default():
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", readme, flags=re.M))
    defaults = OmegaConf.load(REPO / "fedcmd_plugin" / "defaults.yaml")
    missing = [key for key, _ in leaves(defaults) if key not in rows]
    assert not missing, f"README config reference lacks {missing}"
    for key, value in leaves(defaults):
        shown = rows[key].strip().strip("`")
        expected = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        shown = "" if shown == "\"\"" else shown
        if not OmegaConf.is_list(value):
            assert shown == expected, (key, shown, expected)
