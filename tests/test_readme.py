"""The README's two commands and CI stay in step."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  assert all("\n" not in c for c in commands)
  assert all(c.startswith("python3 -m venv .venv") for c in commands)


def test_ci_runs_the_readme_test_command():
  test_command = _readme_commands()[1]
  assert "pytest" in test_command
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert test_command in ci.splitlines()
