"""Every third-party module the package and the tools import is a declared requirement (setup.cfg), and the layers
depend one way: the package never imports ``tools/``, and a test uses a tool only when that tool is what it tests.

CI installs only through setup.cfg in a fresh venv; this test names a missing declaration directly instead of
letting it surface as an ``ImportError`` deep in a bundle run (scipy, needed by MONAI's HD95, was once missing).
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import os
import re
import sys

from conftest import ROOT

# modules MONAI imports optionally that the bundles' components need at run time (``monai.utils.optional_import``
# hides them from an import walk): HausdorffDistance (HD95) uses scipy.ndimage
INDIRECT = {"scipy": "install_requires"}
# local modules; test_region: the decoding tests' shared networks (tests/networks/); test_monailabel: the served
# bundles and the real-server helpers the click tests share
LOCAL = {"prato_components", "tools", "conftest", "monailabel_app", "lib", "main", "test_region", "test_monailabel"}
# test module -> the tools it tests (imported, or run by path); any other use of tools/ by a test fails below.
# test_monailabel.py (and test_monailabel_clicks.py) start MONAI Label through tools/monailabel_load.py's launcher and
# tools/monailabel_env.sh's environment (tests/conftest.py).
TOOL_SUBJECTS = {
    "tests/test_3d.py": {"make_data"},
    "tests/test_bad_inputs.py": {"bad_inputs"},
    "tests/test_data.py": {"make_data"},
    "tests/test_benchmark.py": {"benchmark"},
    "tests/test_bundle_configs.py": {"bundlegen"},
    "tests/test_bundles_3d.py": {"demo"},
    "tests/test_click_ceiling.py": {"click_ceiling"},
    "tests/test_experiments.py": {"experiment_plan", "experiments", "report"},
    "tests/test_gpu_benchmark.py": {"gpu_benchmark"},
    "tests/test_monailabel.py": {"monailabel_load", "monailabel_env"},
    "tests/test_monailabel_clicks.py": {"monailabel_load"},
    "tests/test_monailabel_session.py": {"monailabel_session"},
    "tests/test_share_bundles.py": {"package_bundles"},
    "tests/test_verify_bundles.py": {"verify_bundles"},
}
TOOL_FILE = re.compile(r"(\w+)\.(?:py|sh)")


def _requirements() -> dict[str, set[str]]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))

    def names(text: str) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", line.strip())[0].lower().replace("_", "-")
                for line in text.splitlines() if line.strip()}

    out = {"install_requires": names(parser["options"]["install_requires"])}
    for extra, text in parser["options.extras_require"].items():
        out[extra] = names(text)
    return out


def _python_files(folder: str) -> list[str]:
    out = []
    for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        out += [os.path.join(base, name) for name in files if name.endswith(".py")]
    return sorted(out)


def _imports(folder: str) -> dict[str, str]:
    """Top-level module -> first file importing it, for every ``.py`` under ``folder`` (imports inside functions
    count: they run too)."""
    found: dict[str, str] = {}
    for path in _python_files(folder):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], os.path.relpath(path, ROOT))
    return found


def _tools_used(path: str) -> set[str]:
    """The tools a Python file imports (``tools.x``, ``from tools import x``) or runs by path (a call with the
    arguments ``"tools", "x.py"`` as in ``os.path.join(ROOT, "tools", "x.py")``, or a string that is the path
    ``"tools/x.py"``). Prose that names a tool (docstrings, messages) is not a use."""
    used = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            used |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("tools.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tools":
                used |= {alias.name for alias in node.names}
            elif node.module.startswith("tools."):
                used.add(node.module.split(".")[1])
        elif isinstance(node, ast.Call):
            args = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            files = [TOOL_FILE.fullmatch(b) for a, b in zip(args, args[1:]) if a == "tools"]
            used |= {match[1] for match in files if match}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("tools/"):
            match = TOOL_FILE.fullmatch(node.value.removeprefix("tools/"))
            used |= {match[1]} if match else set()
    return used


def _tool_uses(folder: str) -> dict[str, set[str]]:
    """File (relative to the repository) -> the tools it uses, for the files that use any."""
    uses = {os.path.relpath(path, ROOT): _tools_used(path) for path in _python_files(folder)}
    return {path: tools for path, tools in uses.items() if tools}


def _undeclared(folder: str, allowed: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_imports(folder).items()):
        if module in sys.stdlib_module_names or module in LOCAL or module.startswith("_"):
            continue
        candidates = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not candidates & allowed:
            missing.append(f"{module} (imported by {path}; distribution {sorted(candidates)})")
    return missing


def test_package_imports_are_install_requirements():
    requirements = _requirements()
    assert _undeclared("prato_components", requirements["install_requires"]) == []


def test_tool_imports_are_declared():
    requirements = _requirements()
    allowed = requirements["install_requires"] | requirements["dev"] | requirements.get("tracking", set())
    monailabel = {"monailabel"}  # tools/monailabel_session.py runs in MONAI Label's venv (tools/monailabel_env.sh)
    assert _undeclared("tools", allowed | monailabel) == []


def test_test_imports_are_declared_in_dev():
    requirements = _requirements()
    monailabel = {"monailabel"}  # the MONAI Label tests skip themselves without it (tools/monailabel_env.sh)
    assert _undeclared("tests", requirements["install_requires"] | requirements["dev"] | monailabel) == []


def test_indirect_requirements_are_declared():
    requirements = _requirements()
    for module, where in INDIRECT.items():
        assert module in requirements[where], f"{module} must be in {where}"


def test_the_walk_finds_a_missing_declaration(tmp_path, monkeypatch):
    """The check itself can fail: a module importing an undeclared package is reported."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text("import json\nimport numpy\n\ndef f():\n    import scipy.ndimage\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    missing = _undeclared("pkg", {"numpy"})
    assert len(missing) == 1 and missing[0].startswith("scipy (imported by pkg/mod.py")


def test_the_package_does_not_import_tools():
    """``prato_components`` is installable on its own: nothing in it imports or runs ``tools/`` (the tools import the
    package, never the reverse)."""
    assert _tool_uses("prato_components") == {}


def test_tests_use_only_the_tools_they_test():
    uses = _tool_uses("tests")
    strays = {path: sorted(tools - TOOL_SUBJECTS.get(path, set())) for path, tools in uses.items()}
    assert {path: tools for path, tools in strays.items() if tools} == {}
    assert uses == TOOL_SUBJECTS  # and the map names nothing a test no longer uses


def test_the_tool_walk_finds_imports_and_paths(tmp_path, monkeypatch):
    """The layering check can fail: an import of a tool, a ``from tools import``, and a tool run by path are found;
    a mention in a docstring or a comment is not."""
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_x.py").write_text(
        '"""Uses tools/demo.py in prose only."""\nimport os\nimport tools.bundles\nfrom tools import report\n\n'
        'def test_y():\n    # tools/benchmark.py\n    from tools.verify_bundles import export\n'
        '    print("run python tools/demo.py")\n'
        '    return os.path.join("r", "tools", "make_data.py"), ["bash", "tools/monailabel_env.sh"]\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert _tool_uses("tests") == {os.path.join("tests", "test_x.py"): {"bundles", "report", "verify_bundles",
                                                                         "make_data", "monailabel_env"}}
