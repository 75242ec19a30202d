"""`LocalStore`: a directory of artifacts, versioned by each file's mtime and size.

A writer should replace an artifact by renaming a finished file over it (as `fetch` itself
writes): a file rewritten in place can be copied half-written, though the next poll then sees
its final mtime and loads it again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mark.adapters.model_store import SUFFIX_KINDS, StoredModel, split_name, valid_name
from mark.core.errors import InvalidValue, NotFound

__all__ = ["LocalStore"]


class LocalStore:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise InvalidValue("store", f"model store directory {root} does not exist")
        self.root = root.resolve()
        self.url = str(self.root)

    def _entry(self, path: Path) -> StoredModel | None:
        named = split_name(path.name)
        if named is None:
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        name, kind = named
        return StoredModel(name, str(path), kind, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def list(self, prefix: str = "") -> list[StoredModel]:
        entries = (self._entry(p) for p in sorted(self.root.iterdir()) if p.is_file())
        return [e for e in entries if e is not None and e.name.startswith(prefix)]

    def artifact(self, model: StoredModel) -> str:
        return f"{model.kind}:{model.key}"

    def stat(self, name: str) -> StoredModel:
        if valid_name(name):
            for suffix in SUFFIX_KINDS:
                entry = self._entry(self.root / f"{name}{suffix}")
                if entry is not None:
                    return entry
        raise NotFound(f"model {name!r} is not in the store {self.url}")

    def fetch(self, model: StoredModel, dest: Path) -> StoredModel:
        current = self._entry(Path(model.key))
        if current is None:
            raise NotFound(f"model {model.name!r} is no longer in the store {self.url}")
        tmp = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(model.key, tmp)
        os.replace(tmp, dest)
        return current
