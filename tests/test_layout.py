"""docs/layout.md names every module, so that the map of the code cannot drift from it."""

import os
import re

from tests.paths import ROOT

TOP = ("trainer", "input_pipeline", "models", "scripts")


def _packages() -> list[str]:
  """The top folders and every package inside them (trainer/run, ...)."""
  found = []
  for top in TOP:
    for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      if folder.endswith(top) or "__init__.py" in files:
        found.append(os.path.relpath(folder, ROOT).replace(os.sep, "/"))
  return found


def _blocks(text: str) -> dict[str, str]:
  """Each top-level folder's entry in layout.md's map: its name -> its text."""
  blocks, name = {}, None
  for line in text.splitlines():
    head = re.match(r"    (\S+)/ ", line)
    if head:
      name = head.group(1)
    elif not line.startswith("    "):
      name = None
    if name:
      blocks[name] = blocks.get(name, "") + line + "\n"
  return blocks


def test_layout_names_every_module():
  with open(os.path.join(ROOT, "docs", "layout.md"), encoding="utf-8") as f:
    blocks = _blocks(f.read())
  missing = []
  for package in _packages():
    for name in sorted(os.listdir(os.path.join(ROOT, package))):
      path = os.path.join(ROOT, package, name)
      # An empty __init__.py only marks a package: there is nothing in it to describe.
      if not name.endswith(".py") or os.path.getsize(path) == 0:
        continue
      if not re.search(rf"(?<![\w.]){re.escape(name)}", blocks.get(package, "")):
        missing.append(f"{package}/{name}")
  assert not missing, f"docs/layout.md does not name {missing}"
