"""The README's set-up commands are the ones CI runs."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  text = open(os.path.join(REPO, "README.md")).read()
  section = text.split("## Set up and run")[1].split("\n## ")[0]
  return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_exactly_two_setup_commands():
  commands = readme_commands()
  assert len(commands) == 2, commands
  assert all("\n" not in c for c in commands)
  assert "python -m experiments." in commands[0]
  assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  assert readme_commands()[1] in ci.splitlines()
