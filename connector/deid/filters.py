"""Object-level decisions before any element is touched: quarantine, skip, or clean burned-in pixels.

Filters run in profile order and the first match decides. A filter marked ``unless_pixel_rule``
steps aside when a pixel-region rule for the object's device will blank the text areas: that is
the only way an object with possible burned-in text goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from connector.deid.rulefile import MISSING, Filter, PixelRegionRule

# Pixel data of these modalities is the measurement itself: never altered (issue 3).
PROTECTED_PIXEL_MODALITIES = frozenset({"CT", "PT", "NM", "MR"})


@dataclass(frozen=True)
class Verdict:
    action: str  # "accept" | "quarantine" | "skip"
    reason: str = ""
    filter_id: str = ""
    pixel_rule: PixelRegionRule | None = None


class PixelCleaningRefused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _actual(ds: Dataset, keyword: str) -> list[str]:
    try:
        value = ds.get(keyword)
    except Exception:  # an unparseable value cannot satisfy a condition
        return []
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip().upper() for v in value if str(v).strip()]
    return [str(value).strip().upper()]


def matches(ds: Dataset, when: Sequence[tuple[str, tuple[str, ...]]]) -> bool:
    """All conditions hold; a condition holds when any of the element's values is listed."""
    for keyword, wanted in when:
        actual = _actual(ds, keyword)
        if not actual:
            if MISSING not in wanted:
                return False
            continue
        wanted_upper = {w.upper() for w in wanted if w != MISSING}
        if not any(a in wanted_upper for a in actual):
            return False
    return True


class ObjectFilters:
    def __init__(self, filters: Sequence[Filter], pixel_rules: Sequence[PixelRegionRule]) -> None:
        self.filters = tuple(filters)
        self.pixel_rules = tuple(pixel_rules)

    def evaluate(self, ds: Dataset) -> Verdict:
        pixel_rule = next((p for p in self.pixel_rules if matches(ds, p.when)), None)
        for f in self.filters:
            if not matches(ds, f.when):
                continue
            if f.unless_pixel_rule and pixel_rule is not None:
                continue
            return Verdict(f.action, f.reason, f.id, pixel_rule)
        return Verdict("accept", "", "", pixel_rule)


def clean_pixel_regions(ds: Dataset, rule: PixelRegionRule) -> None:
    """Blank the rule's rectangles in every frame; compressed pixel data is decoded first."""
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in PROTECTED_PIXEL_MODALITIES:
        raise PixelCleaningRefused("pixel-rule-protected-modality")
    if "PixelData" not in ds:
        raise PixelCleaningRefused("pixel-rule-no-pixel-data")
    if int(ds.get("BitsAllocated", 8) or 8) == 1:
        raise PixelCleaningRefused("pixel-rule-unsupported-bit-depth")
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        arr = ds.pixel_array.copy()
    except Exception:
        raise PixelCleaningRefused("pixel-rule-cannot-decode") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for x, y, w, h in rule.regions:
        if frames > 1:
            arr[:, y:y + h, x:x + w] = 0
        else:
            arr[y:y + h, x:x + w] = 0
    ds.PixelData = arr.tobytes()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"
