"""What the app remembers between runs (the last folder a recording was opened from)."""

from __future__ import annotations

import json
from pathlib import Path

from cpsc2018.util import atomic_write_text


class Settings:
    def __init__(self, folder: Path | str) -> None:
        self.path = Path(folder) / "ecg-lite-settings.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}  # first run, or a damaged file: start fresh rather than crash

    @property
    def last_folder(self) -> str | None:
        folder = self.data.get("last_folder")
        return folder if folder and Path(folder).is_dir() else None

    def remember_record(self, record: Path | str) -> None:
        self.data["last_folder"] = str(Path(record).resolve().parent)
        atomic_write_text(self.path, json.dumps(self.data))
