"""The house's rules that the import graph must keep (issue 26): settings are leaves, the product does not
lean on the dev registry, the state DB's schema steps are one list handed in from the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_settings_import_no_stage_package() -> None:
    for path in sorted((ROOT / "connector" / "settings").glob("*.py")):
        for module in _imports(path):
            assert (not module.startswith("connector") or module.startswith("connector.settings")
                    or module == "connector.vocabulary"), f"{path.name} imports {module}"


def test_only_the_registry_command_starts_the_dev_registry() -> None:
    users = {path.relative_to(ROOT).as_posix() for path in (ROOT / "connector").rglob("*.py")
             if any(m == "devregistry" or m.startswith("devregistry.") for m in _imports(path))}
    assert users == {"connector/cli/registry_cmd.py"}


def test_schema_steps_are_one_ordered_list_of_functions() -> None:
    from connector.site_db import SCHEMA_STEPS

    versions = [version for version, _ in SCHEMA_STEPS]
    assert versions == list(range(1, len(versions) + 1))
    assert all(callable(step) for _, step in SCHEMA_STEPS)
    state = (ROOT / "connector" / "store" / "state.py").read_text()
    assert "importlib" not in state and "import_module" not in state


def test_no_raw_update_of_studies_outside_the_state_store() -> None:
    for path in sorted((ROOT / "connector").rglob("*.py")):
        if path.name == "state.py" and path.parent.name == "store":
            continue
        if path.parent.name == "linkage":  # the linkage database's own studies table
            continue
        assert "UPDATE studies" not in path.read_text(), path.relative_to(ROOT).as_posix()


def test_every_role_the_supervisor_starts_has_a_main() -> None:
    """A role kind appended by the supervisor without a target would fail only when that door is enabled."""
    import re

    from connector.roles import ROLE_TARGETS

    kinds = set(re.findall(r'_Role\([^,]+,\s*"(\w+)"', (ROOT / "connector" / "daemon.py").read_text()))
    assert kinds == {"receiver", "pipeline", "push", "stow", "hl7"}
    assert kinds <= set(ROLE_TARGETS)
