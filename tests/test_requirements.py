"""Every third-party module the package and the tools import is a declared requirement (setup.cfg).

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
LOCAL = {"prato_components", "tools", "conftest", "monailabel_app", "lib", "main"}


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


def _imports(folder: str) -> dict[str, str]:
    """Top-level module -> first file importing it, for every ``.py`` under ``folder`` (imports inside functions
    count: they run too)."""
    found: dict[str, str] = {}
    for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(base, name)
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
    assert _undeclared("tools", allowed) == []


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
