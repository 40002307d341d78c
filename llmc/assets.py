"""Data shipped inside the llmc package, found through ``importlib.resources``: the model presets and the
app templates (Android, iOS, the shared C++ engine, bundle READMEs, the web page).

llmc is installed as plain files (never zipped), so each is a folder on disk that jinja2 and shutil can read.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PRESETS_DIR = Path(str(files("llmc") / "presets"))
TEMPLATES_DIR = Path(str(files("llmc") / "templates"))
