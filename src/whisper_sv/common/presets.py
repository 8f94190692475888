"""The presets that ship inside the package (``whisper_sv/configs/*.json``), found by name.

A preset argument is a JSON file; where no such file exists, the packaged preset of that file's
name: ``cpu-demo``, ``cpu-demo.json`` and ``configs/cpu-demo.json`` all name the shipped
``cpu-demo.json`` from any folder, so a wheel installed anywhere runs the commands the README
shows. A file of that name in the working folder wins, so a user's edited copy is what runs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import UserError, with_closest


def packaged_presets() -> dict[str, Path]:
    """``{name without .json: file}`` of every preset in the package."""
    folder = resources.files("whisper_sv") / "configs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".json")}


def preset_path(spec: str | Path) -> Path:
    """The file a preset argument names: the file itself when it exists, else the packaged preset of
    its name; a UserError naming the presets that ship when neither exists."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = packaged_presets()
    name = path.name.removesuffix(".json")
    if name in shipped and path.suffix in ("", ".json"):
        return shipped[name]
    raise UserError(f"preset {str(spec)!r}: no such file, and no shipped preset {with_closest(name, shipped)} "
                    f"(shipped: {', '.join(sorted(shipped))})")
