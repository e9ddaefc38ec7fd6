"""The package's layers as the README's "Architecture" section states them: which part may import which, and no
import cycle among the modules' top-level imports. Computed from the source, so the section cannot drift."""
import ast
import re

from conftest import REPO

PACKAGE = REPO / "fedcmd_plugin"


def part_of(path):
    """A top-level module or sub-package name: `federation`, `cli`, `aggregate`..."""
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else relative[0].removesuffix(".py")


def module_of(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path, top_level_only):
    """The fedcmd_plugin modules `path` imports (all of its imports, or only those run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedcmd_plugin"):
            found.update(f"{node.module}.{a.name}" for a in node.names)  # a name may be a submodule
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fedcmd_plugin"))
    return found


def documented_rules():
    """{part: set of parts it may import} from the README's architecture table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            parts = re.findall(r"`([a-z_]+)/?`", cells[0])
            allowed = set(re.findall(r"`([a-z_]+)/?`", cells[2]))
            for part in parts:
                rules[part] = allowed
    return rules


def test_every_import_between_parts_is_one_the_readme_allows():
    rules = documented_rules()
    files = sorted(PACKAGE.rglob("*.py"))
    parts = {part_of(path) for path in files} - {"__main__"}
    assert parts <= set(rules), f"parts missing from the README's architecture table: {sorted(parts - set(rules))}"
    breaches = set()
    for path in files:
        mine = part_of(path)
        for name in imported(path, top_level_only=False):
            theirs = name.split(".")[1] if name.count(".") else None
            if theirs is not None and theirs not in parts:
                theirs = "__init__"  # a name the package itself exports (`from fedcmd_plugin import __version__`)
            if theirs and theirs != mine and mine in rules and theirs not in rules[mine]:
                breaches.add(f"{path.relative_to(REPO)} imports {name} ({mine} -> {theirs})")
    assert not breaches, "\n".join(sorted(breaches))


def test_no_import_cycle_at_import_time():
    modules = {module_of(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in imported(path, top_level_only=True):
            while target and target not in modules:  # `from pkg.mod import name` -> pkg.mod (name: no module)
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    state, cycle = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle.extend(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, trail + [nxt]):
                return True
        state[node] = "done"
        return False

    for start in sorted(graph):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)
