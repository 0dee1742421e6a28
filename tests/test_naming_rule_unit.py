"""The test files' naming rule (tests/conftest.py): `_unit` means no testbed, and is true."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, naming_problems


def test_the_rule_on_made_up_files():
    assert naming_problems({"test_a_unit.py": (set(), False), "test_b.py": ({"test_x"}, False),
                            "test_c.py": (set(), True)}) == []
    unit_with_testbed, plain_without = naming_problems({"test_a_unit.py": ({"test_deploys"}, False),
                                                        "test_b.py": (set(), False)})
    assert "test_a_unit.py" in unit_with_testbed and "test_deploys" in unit_with_testbed
    assert "name it test_b_unit.py" in plain_without


def test_a_misnamed_file_stops_the_run(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_sneaky_unit.py").write_text("def test_uses_the_server(testbed):\n    pass\n")
    (tmp_path / "test_pure.py").write_text("def test_adds():\n    assert 1 + 1 == 2\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
                          "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr  # a usage error
    out = res.stdout + res.stderr
    assert "test_sneaky_unit.py is named _unit" in out and "name it test_pure_unit.py" in out
