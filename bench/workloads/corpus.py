"""The language-model suite's corpus: the running interpreter's standard-library ``.py``
files (text no one here wrote, present wherever this package runs; nothing is downloaded),
read as bytes (a byte-level model: 256 tokens).

The split is by file and deterministic: a file's split follows from a hash of its path
relative to the standard library, so it does not depend on which other files exist, and
files never straddle two splits. Each split is the concatenation of its files in sorted
order. A SHA-256 over every file's path and contents (sorted) identifies the corpus; it is
stored with the results, with the byte and file counts."""
import hashlib
import pathlib
import sysconfig
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

SPLITS = ("train", "validation", "test")
VOCAB = 256  # byte values: the model's tokens
# Percent of the files (by path hash) in the test and validation splits; the rest trains.
TEST_PERCENT = 5
VALIDATION_PERCENT = 5
# Installed third-party packages live under the standard library's folder on some builds.
EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def source_files(root: pathlib.Path) -> List[str]:
    """The ``.py`` files under ``root`` (paths relative to it, sorted), installed
    packages excluded."""
    if not root.is_dir():
        raise FileNotFoundError(f"no standard library folder at {root}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if p.is_file() and not _excluded(p.relative_to(root)))
    if not files:
        raise FileNotFoundError(f"no .py files under {root}")
    return files


def _excluded(relative: pathlib.PurePath) -> bool:
    return any(part in EXCLUDED_DIRS for part in relative.parts[:-1])


def split_of(relative_path: str) -> str:
    """The split of a file, from its path alone."""
    bucket = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:4], "big") % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + VALIDATION_PERCENT:
        return "validation"
    return "train"


class Corpus(NamedTuple):
    root: str
    files: Dict[str, List[str]]    # split -> relative paths, sorted
    streams: Dict[str, Tensor]     # split -> uint8 bytes of its files concatenated
    sha256: str                    # over every file's path and contents, sorted by path
    total_bytes: int               # every file, before any cap on the training split
    total_files: int

    def info(self) -> dict:
        """What the results record about the corpus."""
        return dict(corpus_root=self.root, corpus_sha256=self.sha256,
                    corpus_bytes=self.total_bytes,
                    corpus_files=self.total_files,
                    **{f"{s}_files": len(self.files[s]) for s in SPLITS},
                    **{f"{s}_bytes": len(self.streams[s]) for s in SPLITS})


def load(root: Optional[pathlib.Path] = None, train_bytes: int = 0) -> Corpus:
    """The corpus under ``root`` (default: this interpreter's standard library).
    ``train_bytes`` > 0 keeps training files, taken in the order of their path hashes (a
    spread over the whole library, not its first letters), until that many bytes; the
    validation and test splits are always whole."""
    root = root or stdlib_root()
    digest = hashlib.sha256()
    contents: Dict[str, bytes] = {}
    files: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for relative in source_files(root):
        data = (root / relative).read_bytes()
        for part in (relative.encode(), data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        contents[relative] = data
        files[split_of(relative)].append(relative)
    if train_bytes > 0:
        files["train"] = _capped(files["train"], contents, train_bytes)
    streams = {s: _stream([contents[f] for f in files[s]]) for s in SPLITS}
    empty = [s for s in SPLITS if len(streams[s]) == 0]
    if empty:
        raise ValueError(f"the corpus under {root} leaves no bytes in {', '.join(empty)}")
    return Corpus(str(root), files, streams, digest.hexdigest(),
                  sum(len(d) for d in contents.values()), len(contents))


def _capped(train: List[str], contents: Dict[str, bytes], limit: int) -> List[str]:
    kept, size = [], 0
    for relative in sorted(train, key=lambda f: hashlib.sha256(f.encode()).digest()):
        if size >= limit:
            break
        kept.append(relative)
        size += len(contents[relative])
    return sorted(kept)


def _stream(parts: Sequence[bytes]) -> Tensor:
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def random_batch(stream: Tensor, batch: int, context: int, generator: torch.Generator
                 ) -> Tuple[Tensor, Tensor]:
    """``batch`` windows at random offsets: inputs (batch, context) and the next bytes."""
    if len(stream) < context + 1:
        raise ValueError(f"a stream of {len(stream)} bytes is shorter than a window of "
                         f"{context + 1}")
    starts = torch.randint(0, len(stream) - context, (batch,), generator=generator)
    return _windows(stream, starts, context)


def evaluation_windows(stream: Tensor, count: int, context: int) -> Tuple[Tensor, Tensor]:
    """``count`` windows evenly spread over the stream (the same for every method and
    seed); fewer when the stream is too short for ``count`` without overlap."""
    count = max(1, min(count, len(stream) // (context + 1)))
    starts = torch.linspace(0, len(stream) - context - 1, count).long()
    return _windows(stream, starts, context)


def _windows(stream: Tensor, starts: Tensor, context: int) -> Tuple[Tensor, Tensor]:
    index = starts[:, None] + torch.arange(context + 1)
    windows = stream[index].long()
    return windows[:, :-1], windows[:, 1:]
