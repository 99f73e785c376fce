"""An exception as one line an operator can act on, with nothing identifying left in it.

Why: "error: AttributeError" tells hospital IT nothing; the message (``'FileDataset' object has no
attribute 'PatientBirthDate'``) says what to fix. But messages may quote values (a UID, a date, a
name in a pydicom complaint, a file path), so it is scrubbed fail-closed before it reaches a log
line, the state database, ``status`` or the dashboard:

- UIDs (dotted digit runs) -> ``<uid>``; digit runs of 5 or more (dates, IDs) -> ``<number>``;
- absolute paths -> ``<path>`` (the spool's file names are hashes, but a drop folder's are not);
- a quoted value is kept only when it is a DICOM keyword (``'PatientBirthDate'``) or a Python name
  on a short allow-list (``'FileDataset'``, builtins); any other quoted text -> ``'…'``;
- the first line only, at most :data:`MAX_CHARS` characters.

Frames of the traceback (file, line, function: code locations, never values) go to DEBUG.
"""

from __future__ import annotations

import re
import traceback
from functools import lru_cache

MAX_CHARS = 200

_UID = re.compile(r"\b\d+(?:\.\d+){2,}\b")
_DIGITS = re.compile(r"\d{5,}")
_PATH = re.compile(r"(?<![\w.])/[^\s'\"]+")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
# Names a library's message may quote that are code, not data (an allow-list: anything else goes).
_CODE_NAMES = frozenset({"Dataset", "FileDataset", "DataElement", "RawDataElement", "Sequence", "MultiValue",
                         "PersonName", "DSfloat", "IS", "ndarray", "NoneType", "pixel_array", "PixelData",
                         "InferenceSession", "SeriesResult"})


@lru_cache(maxsize=1)
def _dicom_keywords() -> frozenset[str]:
    from pydicom.datadict import keyword_dict

    return frozenset(keyword_dict)


def _keep_quoted(text: str) -> bool:
    return text in _dicom_keywords() or text in _CODE_NAMES or text in _builtin_names() or text == ""


@lru_cache(maxsize=1)
def _builtin_names() -> frozenset[str]:
    import builtins

    return frozenset(dir(builtins))


def _quoted(match: re.Match[str]) -> str:
    text = match.group(1) if match.group(1) is not None else match.group(2)
    quote = match.group(0)[0]
    return match.group(0) if _keep_quoted(text) else f"{quote}…{quote}"


def scrub(text: str) -> str:
    """``text`` with every value that might identify someone replaced (see the module docstring)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _QUOTED.sub(_quoted, line)
    line = _UID.sub("<uid>", line)
    line = _PATH.sub("<path>", line)
    line = _DIGITS.sub("<number>", line)
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 1] + "…"


def safe_reason(exc: BaseException) -> str:
    """``"AttributeError: 'FileDataset' object has no attribute 'PatientBirthDate'"``, scrubbed."""
    message = scrub(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def frames(exc: BaseException, limit: int = 6) -> list[str]:
    """The innermost ``limit`` frames as ``file:line in function`` (code locations only)."""
    stack = traceback.extract_tb(exc.__traceback__)[-limit:]
    return [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in stack]


def _short(filename: str) -> str:
    """A source file relative to its package (``connector/pipeline/worker.py``, ``highdicom/sr/sop.py``)."""
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    if "connector" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("connector"):])
    return parts[-1]
