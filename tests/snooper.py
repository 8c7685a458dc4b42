"""The information-boundary inspector the boundary tests share (DESIGN §2): `Snooper` walks everything
reachable from an attacker's view and reports private material, the test split or the storage root."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

SECRET = 1234.5678
SECRET_PATTERNS = (struct.pack("<f", SECRET), struct.pack("<d", SECRET), b"1234.5678", b"1234.567")

#: Split files no attack may be pointed at (DESIGN §2: the test split scores, the owner's split trains).
FORBIDDEN_SPLIT_FILES = frozenset({"test.jsonl", "owner_train.jsonl"})
#: Set by the boundary test for the snoop that runs inside it: the storage root and the canaries to look for.
BOUNDARY: dict[str, Any] = {}
#: The project's own packages: their classes' data attributes are walked too (a harness could hide state there).
PROJECT_PACKAGES = ("bench", "attacks", "defenses", "tasks")



class Snooper:
    """Searches everything reachable from an attacker's view for private material and the test split.

    The walk follows every reference an attack could follow without importing anything: dataclass fields,
    objects' `__dict__` and `__slots__`, containers (keys too), closures' cells, functions' defaults,
    bound methods' `__self__`, `functools.partial`'s function and arguments, weak references, generators'
    frames, and the data attributes of the project's own classes. Module references (and so functions'
    `__globals__`) are excepted: any attack can import a module. It flags the secret value (as a float or
    in a tensor), any planted canary (in a string, byte string, byte tensor or file), any path under the
    storage root's `private/` or at a test / owner_train split file, the storage root itself (private/ is
    one listing away), and every file under the folders reachable strings name that holds either.
    """

    def __init__(self, root: Path | None = None, canaries: dict[str, str] | None = None) -> None:
        root = root if root is not None else BOUNDARY.get("root")
        self.root = Path(root).resolve() if root is not None else None
        self.canaries: dict[str, str] = dict(canaries if canaries is not None else BOUNDARY.get("canaries", {}))
        self.findings: list[str] = []
        self.tensors = 0
        self.files = 0
        self.objects = 0
        self.paths: set[Path] = set()
        self._seen: set[int] = set()
        self._alive: list[Any] = []  # keeps visited temporaries alive, so their ids are not reused

    # --------------------------------------------------------------- the walk

    def visit(self, value: Any, where: str) -> None:
        stack: list[tuple[Any, str]] = [(value, where)]
        while stack:
            item, at = stack.pop()
            children = self._children(item, at)
            stack.extend(reversed(children))

    def _children(self, value: Any, where: str) -> list[tuple[Any, str]]:
        import functools
        import types
        import weakref

        import numpy as np

        if isinstance(value, str):
            self.check_string(value, where)
            return []
        if isinstance(value, bytes | bytearray | memoryview):
            self.check_bytes(bytes(value), where)
            return []
        if isinstance(value, bool | int | float | complex | type(None)):
            if isinstance(value, float) and math.isclose(value, SECRET, rel_tol=1e-6):
                self.findings.append(f"{where}: the secret value")
            return []
        if isinstance(value, os.PathLike):
            self.check_string(os.fspath(value), where)
            return []
        if isinstance(value, types.ModuleType) or id(value) in self._seen:
            return []
        self._seen.add(id(value))
        self._alive.append(value)
        self.objects += 1
        out: list[tuple[Any, str]] = []
        if isinstance(value, type):
            if str(getattr(value, "__module__", "")).split(".")[0] in PROJECT_PACKAGES:
                out += [(item, f"{where}.{name}") for name, item in vars(value).items()
                        if not (callable(item) or isinstance(item, staticmethod | classmethod | property))
                        and not name.startswith("__")]
            return out
        if isinstance(value, torch.Tensor):
            self.check_tensor(value, where)
        elif isinstance(value, np.ndarray):
            self.check_bytes(value.tobytes(), where)
        elif isinstance(value, PreTrainedTokenizerBase):
            backend = getattr(value, "backend_tokenizer", None)
            if backend is not None:  # the Rust tokenizer has no __dict__: its whole state, as JSON
                self.check_string(backend.to_str(), f"{where}.backend_tokenizer.to_str()")
        if isinstance(value, dict):
            for key, item in value.items():
                out += [(key, f"{where}[key]"), (item, f"{where}[{key!r}]")]
        elif isinstance(value, list | tuple | set | frozenset) or type(value).__name__ == "deque":
            out += [(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, functools.partial):
            out += [(value.func, f"{where}.func"), (value.args, f"{where}.args"), (value.keywords, f"{where}.keywords")]
        if isinstance(value, types.MethodType):
            out += [(value.__self__, f"{where}.__self__"), (value.__func__, f"{where}.__func__")]
        elif isinstance(value, types.BuiltinMethodType | types.MethodWrapperType):
            out.append((getattr(value, "__self__", None), f"{where}.__self__"))
        if isinstance(value, types.FunctionType):
            for name, cell in zip(value.__code__.co_freevars, value.__closure__ or (), strict=True):
                out.append((cell, f"{where}.<closure {name}>"))
            out += [(value.__defaults__, f"{where}.__defaults__"), (value.__kwdefaults__, f"{where}.__kwdefaults__")]
        if isinstance(value, types.CellType):
            with contextlib.suppress(ValueError):  # an empty cell
                out.append((value.cell_contents, where))
        if isinstance(value, weakref.ref):
            out.append((value(), f"{where}()"))
        if isinstance(value, types.GeneratorType | types.CoroutineType | types.AsyncGeneratorType):
            frame = getattr(value, "gi_frame", None) or getattr(value, "cr_frame", None) or getattr(value, "ag_frame", None)
            if frame is not None:
                out.append((dict(frame.f_locals), f"{where}.<frame locals>"))
        if dataclasses.is_dataclass(value):
            out += [(getattr(value, item.name, None), f"{where}.{item.name}") for item in dataclasses.fields(value)]
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            out += [(item, f"{where}.{name}") for name, item in attributes.items()]
        for cls in type(value).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                    out.append((getattr(value, name), f"{where}.{name}"))
        if str(getattr(type(value), "__module__", "")).split(".")[0] in PROJECT_PACKAGES:
            out.append((type(value), f"{where}.__class__"))
        return out

    # --------------------------------------------------------------- the checks

    def check_tensor(self, tensor: torch.Tensor, where: str) -> None:
        self.tensors += 1
        if tensor.is_floating_point() and torch.isclose(tensor.detach().float(), torch.tensor(SECRET)).any():
            self.findings.append(f"{where}: tensor holding the secret value")
        if tensor.dtype in (torch.uint8, torch.int8) and tensor.numel() < 1 << 26:
            self.check_bytes(tensor.detach().cpu().contiguous().numpy().tobytes(), where)

    def check_bytes(self, data: bytes, where: str) -> None:
        for label, canary in self.canaries.items():
            if canary.encode() in data:
                self.findings.append(f"{where}: holds the {label} canary")

    def _forbidden_path(self, path: Path) -> str | None:
        """Why a path must not be reachable, else None."""
        if path.name in FORBIDDEN_SPLIT_FILES:
            return f"the {path.stem} split's file"
        if self.root is not None:
            if path == self.root:
                return "the storage root (its private/ is one listing away)"
            if path.is_relative_to(self.root / "private"):
                return "under the storage root's private/"
        return None

    def check_string(self, value: str, where: str) -> None:
        for label, canary in self.canaries.items():
            if canary in value:
                self.findings.append(f"{where}: holds the {label} canary: {value[:80]!r}")
        if "private" in value.lower():
            self.findings.append(f"{where}: string mentions 'private': {value[:80]!r}")
        if not (os.path.isabs(value) and len(value) < 4096 and "\n" not in value):
            return
        path = Path(os.path.realpath(value))
        why = self._forbidden_path(path)
        if why is not None:
            self.findings.append(f"{where}: path {value!r} points at {why}")
            return
        if not path.exists() or self._too_wide(path):
            return
        self.paths.add(path)
        if path.name == "public":  # the release's own folder (metrics.json lives beside public/)
            self.paths.add(path.parent)

    def _too_wide(self, path: Path) -> bool:
        """A folder so general that it holds everything (/, /tmp, the working directory, the home folder or
        an ancestor of the storage root): naming it leads nowhere in particular, so it is not searched."""
        if not path.is_dir():
            return False
        anchors = (Path.cwd().resolve(), Path.home().resolve(), *([self.root] if self.root else []))
        return len(path.parts) <= 2 or any(anchor.is_relative_to(path) for anchor in anchors)

    def scan_files(self) -> None:
        """Every file under every folder a reachable string names."""
        for root in sorted(self.paths):
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                self.scan_file(path)

    def scan_file(self, path: Path) -> None:
        self.files += 1
        why = self._forbidden_path(Path(os.path.realpath(path)))
        if why is not None:
            self.findings.append(f"{path}: reachable file is {why}")
        if "private" in path.name.lower():
            self.findings.append(f"{path}: file named 'private'")
        data = path.read_bytes()
        if b"private" in data.lower():
            self.findings.append(f"{path}: contains the word 'private'")
        if any(pattern in data for pattern in SECRET_PATTERNS):
            self.findings.append(f"{path}: contains the secret value")
        self.check_bytes(data, str(path))


#: One entry per snoop run in this process (serial executor): what it searched and found.
