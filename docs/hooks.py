"""mkdocs hook: add the generated pages (docs/gen_reference.py) to every build and serve.

The pages are made in memory (``File.generated``), so a build writes nothing into ``docs/``
and they are always rebuilt from the current code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File, Files

_HERE = Path(__file__).resolve().parent


def _generator():
    spec = importlib.util.spec_from_file_location("edgefleet_docs_gen", _HERE / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config) -> Files:
    for path, text in _generator().generate().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=text))
    return files
