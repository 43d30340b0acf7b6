"""Project hygiene: packaging lists agree, CI runs the README's test command, notebooks are clean."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


def _environment_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return {line.strip()[2:] for line in lines[start + 1:] if line.startswith("      - ")} - {"-e ."}


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", quickstart, flags=re.M)
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_module_is_in_the_package_map_and_the_readme_layout():
    import deop_lite
    readme_layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for path in (ROOT / "deop_lite").glob("*.py"):
        if path.stem != "__init__":
            assert f"``{path.stem}``" in deop_lite.__doc__, f"{path.stem} is missing from deop_lite/__init__.py's map"
            assert f"{path.stem}.py" in readme_layout, f"{path.stem}.py is missing from the README's layout"


def _package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top of the file or inside a function."""
    import ast
    graph = {}
    for path in (ROOT / "deop_lite").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported.update([node.module] if node.module else [alias.name for alias in node.names])
        graph[path.stem] = imported - {"__init__"}
    return graph


def test_package_dependencies_run_one_way():
    """No import circle, not even through an import inside a function: a module can be read before those that use it."""
    from graphlib import CycleError, TopologicalSorter
    try:
        list(TopologicalSorter(_package_imports()).static_order())
    except CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_ci_mode_is_read_in_one_place():
    readers = [p.name for p in (ROOT / "deop_lite").glob("*.py") if "os.environ" in p.read_text()]
    assert readers == ["runtime.py"]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_source_is_its_paired_script(path):
    jupytext = pytest.importorskip("jupytext")
    script = ROOT / "notebooks" / "scripts" / f"{path.stem}.py"
    assert script.exists(), f"pair the notebook with its script: jupytext --sync {path.relative_to(ROOT)}"
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
    assert cells(jupytext.read(script)) == cells(jupytext.read(path)), \
        f"{script.name} and {path.name} differ: jupytext --sync {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_hygiene(path):
    assert path.stat().st_size < 2 * 1024 * 1024, "keep notebooks under 2 MB"
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], "strip widget state: python tools/strip_widget_state.py"
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})], \
        "strip widget outputs: python tools/strip_widget_state.py"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and first["source"][0].startswith("# ")
    last = "".join(nb["cells"][-1]["source"])
    assert "Next" in last or "The end" in last
    for target in re.findall(r"\*\*Next:\*\* \[[^]]*\]\(([^)]+)\)", last):
        assert (path.parent / target).exists(), f"the Next link {target} does not resolve"
    if "Next" in last:
        assert re.search(r"\*\*Next:\*\* \[", last), "write the Next link as [name](file.ipynb)"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not re.findall(r"\b(?:deop_lite|model_lib|clip_lib|[a-z]+)\.(_[a-z]\w*)\(", code), \
        "notebooks call no private function of the package"
    assert any("## Summary" in "".join(c["source"]) for c in nb["cells"])
    assert any("## Exercises" in "".join(c["source"]) for c in nb["cells"])


MODEL_CORE = ("clip", "proposals", "prompts", "severance", "anchors", "model", "multipass")
WORLDS = {"toyworld", "datasets", "world", "stages", "realworld"}


def test_the_model_core_knows_no_world():
    """The boxes of the DeOP diagram import no world, not even through another module: a world is passed in (its
    classes, its batches, its post-processing) by whoever trains or evaluates (``deop_lite.stages``)."""
    graph = _package_imports()
    for module in MODEL_CORE:
        reached, todo = set(), [module]
        while todo:
            for imported in graph[todo.pop()] - reached:
                reached.add(imported)
                todo.append(imported)
        assert not reached & WORLDS, f"{module} reaches {sorted(reached & WORLDS)}"


def test_no_import_inside_a_function_repeats_one_at_the_top():
    import ast
    for path in (ROOT / "deop_lite").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = lambda node: {(node.module, alias.name) if isinstance(node, ast.ImportFrom) else (alias.name, None)
                              for alias in node.names}
        top = set().union(*(names(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))))
        inner = set().union(*(names(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                              and n not in tree.body))
        assert not top & inner, f"{path.name} imports {sorted(top & inner)} twice"


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "deop_lite").glob("*.py") if p.stem != "__init__"))
def test_docstring_examples_run(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(f"deop_lite.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
