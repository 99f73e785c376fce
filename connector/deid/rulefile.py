"""Parse and validate one YAML rule file, keeping the line of every rule so errors point at it.

Why a hand-rolled reader over ``yaml.safe_load``: an ethics board and a site's IT read these files,
so every mistake must come back as ``FILE:LINE: what is wrong``, and YAML 1.1 quirks must not
change meaning (``NO`` read as false, ``00100010`` read as an integer). We therefore compose the
YAML node tree and take scalars as the text that was written. The format itself is documented in
``docs/rules.md``.

Why one module, long as it is: each rule key's checks sit beside its parser, so a key's
meaning and its error messages are read together.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydicom.datadict import tag_for_keyword

FORMAT_VERSION = 1
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same nodes, faster

# Element actions. The PS3.15 action codes map onto the first seven (see docs/rules.md).
ACTIONS = (
    "remove",
    "empty",
    "dummy",
    "keep",
    "clean",
    "remap_uid",
    "shift_date",
    "pseudonym",
    "replace",
    "cap_age",
)
FILTER_ACTIONS = ("quarantine", "skip", "accept")
DEFAULT_KEYS = ("unlisted", "unknown")  # actions for attributes no rule names (see docs/rules.md)
TEMPLATE_FIELDS = frozenset({"pseudonym", "site"})
MISSING = "<missing>"  # filter value that matches an absent or empty attribute

_TOP_KEYS = {"format", "name", "description", "method", "codes", "include", "defaults", "rules", "filters",
             "pixel_regions", "object_classes", "modules", "iods"}
ATTRIBUTE_TYPES = ("1", "1C", "2", "2C", "3")  # PS3.3 attribute types a module table may give
_UID_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)+$")
_RULE_META = {"action", "value", "template", "max_years", "note", "table", "row", "name"}
_SELECTORS = ("keyword", "tag", "vr", "private")
_VRS = frozenset(["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"])
_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-fXx]{4})\s*,\s*([0-9A-Fa-fXx]{4})\s*\)?$|^([0-9A-Fa-fXx]{8})$")
_HEX2 = re.compile(r"^(?:xx)?([0-9A-Fa-f]{2})$", re.IGNORECASE)


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class RuleFileError(Exception):
    """One or more problems in rule files; ``problems`` holds each with its file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems[:5]) + (" ..." if len(problems) > 5 else ""))


@dataclass(frozen=True)
class Selector:
    """What a rule matches. Exactly one kind: a tag, a tag range, a VR or a private element.

    ``private`` with ``group``/``creator``/``element`` all None matches every private element;
    ``element`` None matches the creator's whole block.
    """

    kind: str  # "tag" | "range" | "vr" | "private"
    tag: int = 0
    mask: int = 0  # range: bits that must equal ``value``
    value: int = 0
    vr: str = ""
    group: int | None = None
    creator: str | None = None
    element: int | None = None

    @property
    def specificity(self) -> int:
        """Higher wins. Private exact > private block > private any; tag > range > VR."""
        if self.kind == "private":
            return 30 if self.element is not None else 20 if self.creator is not None else 10
        if self.kind == "tag":
            return 40
        if self.kind == "range":
            return 32 - (32 - bin(self.mask).count("1")) // 4  # fewer wildcard nibbles, more specific
        return 5  # vr

    def key(self) -> tuple:
        return (self.kind, self.tag, self.mask, self.value, self.vr, self.group, self.creator, self.element)

    def text(self) -> str:
        if self.kind == "tag":
            return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        if self.kind == "range":
            digits = []
            for shift in range(28, -1, -4):
                digits.append("x" if not (self.mask >> shift) & 0xF else f"{(self.value >> shift) & 0xF:X}")
            s = "".join(digits)
            return f"({s[:4]},{s[4:]})"
        if self.kind == "vr":
            return f"VR {self.vr}"
        if self.creator is None:
            return "private (all)"
        elem = "xx" if self.element is None else f"xx{self.element:02X}"
        return f"private ({self.group:04X},{elem}) {self.creator!r}"


@dataclass(frozen=True)
class Rule:
    selector: Selector
    action: str
    where: Location
    value: str | None = None
    template: str | None = None
    max_years: int = 89
    note: str = ""
    table: str = ""  # the PS3.15 action code this rule implements, when generated from the table
    row: str = ""  # the Table E.1-1 row id, when generated from the table
    name: str = ""


@dataclass(frozen=True)
class Filter:
    id: str
    when: tuple[tuple[str, tuple[str, ...]], ...]  # (keyword, accepted values); all must match
    action: str
    reason: str
    where: Location
    unless_pixel_rule: bool = False
    note: str = ""


@dataclass(frozen=True)
class PixelRegionRule:
    id: str
    when: tuple[tuple[str, tuple[str, ...]], ...]
    regions: tuple[tuple[int, int, int, int], ...]  # x, y, width, height
    where: Location
    note: str = ""


@dataclass(frozen=True)
class MethodCode:
    value: str
    meaning: str
    scheme: str = "DCM"


@dataclass(frozen=True)
class IodTypes:
    """PS3.3 attribute types of one IOD's top-level attributes (``iods:`` in a rule file).

    Why: PS3.15's compound actions (X/Z, X/D, Z/D, X/Z/D) depend on the attribute's type in the IOD,
    and removing a type 1 or 2 attribute makes the object invalid. Only types 1 and 2 are kept
    (1C/2C count as 1/2: the attribute was present, so its condition held); any other attribute is
    type 3 or not in the IOD.
    """

    name: str
    section: str
    sop_classes: tuple[str, ...]
    types: tuple[tuple[int, int], ...]  # (tag, 1 or 2)
    where: Location


@dataclass(frozen=True)
class RuleFile:
    path: Path
    name: str
    description: str = ""
    method: str = ""
    codes: tuple[MethodCode, ...] = ()
    includes: tuple[tuple[str, Location], ...] = ()
    defaults: tuple[tuple[str, str, Location], ...] = ()  # (key, action, where)
    rules: tuple[Rule, ...] = ()
    filters: tuple[Filter, ...] = ()
    pixel_regions: tuple[PixelRegionRule, ...] = ()
    # SOP classes that may leave (None: this file says nothing about object classes). Every file's
    # list is added up; with any list loaded, a class on none of them is quarantined.
    object_classes: tuple[str, ...] | None = None
    iods: tuple[IodTypes, ...] = ()
    warnings: tuple[Problem, ...] = field(default=(), compare=False)


# ---------------------------------------------------------------------------------------------
# Tags and selectors


def parse_tag(text: str) -> Selector:
    """``(0010,0010)``, ``0010,0010``, ``00100010``, a keyword, or a range like ``(50xx,xxxx)``."""
    text = text.strip()
    m = _TAG_RE.match(text)
    if not m:
        tag = tag_for_keyword(text)
        if tag is None:
            raise ValueError(f"not a tag or a known keyword: {text!r}")
        return Selector("tag", tag=tag)
    digits = (m.group(1) + m.group(2)) if m.group(1) else m.group(3)
    digits = digits.lower()
    if "x" not in digits:
        return Selector("tag", tag=int(digits, 16))
    mask = int("".join("0" if c == "x" else "f" for c in digits), 16)
    value = int(digits.replace("x", "0"), 16)
    return Selector("range", mask=mask, value=value)


def _hex(text: str, width: int, what: str) -> int:
    t = text.strip().lower()
    t = t.removeprefix("0x")
    if not re.fullmatch(rf"[0-9a-f]{{1,{width}}}", t):
        raise ValueError(f"{what} must be {width} hex digits, got {text!r}")
    return int(t, 16)


def normalise_creator(creator: str) -> str:
    """Private creators compare without padding and case (vendors are inconsistent about both)."""
    return creator.strip(" \x00").upper()


# ---------------------------------------------------------------------------------------------
# Reading YAML with locations


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = path.name
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def at(self, node: yaml.Node) -> Location:
        return Location(self.label, node.start_mark.line + 1)

    def error(self, node: yaml.Node | Location, message: str) -> None:
        where = node if isinstance(node, Location) else self.at(node)
        self.problems.append(Problem(where, message))

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping (key: value)")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, f"{what}: keys must be plain words")
                continue
            if key_node.value in out:
                self.error(key_node, f"{what}: duplicate key {key_node.value!r}")
                continue
            out[key_node.value] = (key_node, value_node)
        return out

    def text(self, node: yaml.Node, what: str) -> str | None:
        """The scalar exactly as written (so ``NO`` stays ``NO`` and ``0010`` stays ``0010``)."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be a single value")
            return None
        return str(node.value)

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.ScalarNode):
            return [node]
        self.error(node, f"{what} must be a list")
        return []

    def integer(self, node: yaml.Node, what: str) -> int | None:
        t = self.text(node, what)
        if t is None:
            return None
        try:
            return int(t, 0) if t.strip().lower().startswith("0x") else int(t)
        except ValueError:
            self.error(node, f"{what} must be an integer, got {t!r}")
            return None

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        value = self._constructor.construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            self.error(node, f"{what} must be true or false")
            return None
        return value


def parse_rule_file(path: Path) -> RuleFile:
    """Read one rule file. Raises :class:`RuleFileError` listing every problem with its line."""
    path = Path(path)
    r = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([Problem(Location(path.name, 0), f"cannot read the file ({exc.__class__.__name__})")]) from None
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise RuleFileError([Problem(Location(path.name, line), f"not valid YAML: {getattr(exc, 'problem', exc)}")]) \
            from None
    if root is None:
        raise RuleFileError([Problem(Location(path.name, 1), "the file is empty")])
    top = r.mapping(root, "the file")
    if top is None:
        raise RuleFileError(r.problems)
    for key, (key_node, _v) in top.items():
        if key not in _TOP_KEYS:
            r.error(key_node, f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")

    if "format" not in top:
        r.error(Location(path.name, 1), f"missing 'format: {FORMAT_VERSION}'")
    else:
        fmt = r.integer(top["format"][1], "format")
        if fmt is not None and fmt != FORMAT_VERSION:
            r.error(top["format"][1], f"unsupported format {fmt} (this version reads {FORMAT_VERSION})")

    def opt_text(key: str) -> str:
        if key not in top:
            return ""
        return r.text(top[key][1], key) or ""

    name = opt_text("name") or path.stem
    method = opt_text("method")
    if len(method) > 64:
        r.error(top["method"][1], "method must be at most 64 characters (it is written to a DICOM LO value)")

    codes = tuple(_codes(r, top["codes"][1])) if "codes" in top else ()
    includes: list[tuple[str, Location]] = []
    if "include" in top:
        for node in r.items(top["include"][1], "include"):
            t = r.text(node, "include entry")
            if t:
                includes.append((t, r.at(node)))
    defaults: list[tuple[str, str, Location]] = []
    if "defaults" in top:
        mapping = r.mapping(top["defaults"][1], "defaults") or {}
        for key, (key_node, value_node) in mapping.items():
            if key not in DEFAULT_KEYS:
                r.error(key_node, f"unknown default {key!r} (known: {', '.join(DEFAULT_KEYS)})")
                continue
            action = r.text(value_node, f"defaults.{key}")
            if action not in ("keep", "remove", "clean"):
                r.error(value_node, f"defaults.{key} must be keep, remove or clean")
                continue
            defaults.append((key, action, r.at(value_node)))

    rules = [rule for node in (r.items(top["rules"][1], "rules") if "rules" in top else [])
             if (rule := _rule(r, node)) is not None]
    filters = [f for node in (r.items(top["filters"][1], "filters") if "filters" in top else [])
               if (f := _filter(r, node)) is not None]
    regions = [p for node in (r.items(top["pixel_regions"][1], "pixel_regions") if "pixel_regions" in top else [])
               if (p := _pixel_rule(r, node)) is not None]
    _check_duplicates(r, rules)
    object_classes: list[str] | None = None
    if "object_classes" in top:
        object_classes = []
        for node in r.items(top["object_classes"][1], "object_classes"):
            uid = r.text(node, "object_classes entry")
            if uid is not None and not _UID_RE.match(uid.strip()):
                r.error(node, f"object_classes entries are SOP Class UIDs (digits and dots), not {uid!r}")
            elif uid:
                object_classes.append(uid.strip())

    iods = _iods(r, top)

    if r.problems:
        raise RuleFileError(r.problems)
    return RuleFile(
        path=path,
        name=name,
        description=opt_text("description"),
        method=method,
        codes=codes,
        includes=tuple(includes),
        defaults=tuple(defaults),
        rules=tuple(rules),
        filters=tuple(filters),
        pixel_regions=tuple(regions),
        object_classes=None if object_classes is None else tuple(object_classes),
        iods=tuple(iods),
        warnings=tuple(r.warnings),
    )


def _iods(r: _Reader, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> list[IodTypes]:
    """``modules:`` (name -> section and attribute types) and ``iods:`` (SOP classes -> modules)."""
    modules: dict[str, list[tuple[int, int]]] = {}
    declared = (r.mapping(top["modules"][1], "modules") or {}) if "modules" in top else {}
    for name, (_k, node) in declared.items():
        m = r.mapping(node, f"modules.{name}") or {}
        for key, (key_node, _v) in m.items():
            if key not in ("section", "attributes", "note"):
                r.error(key_node, f"modules.{name}: unknown key {key!r} (known: attributes, note, section)")
        if "section" not in m or "attributes" not in m:
            r.error(node, f"modules.{name} needs a PS3.3 'section' and 'attributes'")
            continue
        entries: list[tuple[int, int]] = []
        for keyword, (key_node, type_node) in (r.mapping(m["attributes"][1], f"modules.{name}.attributes")
                                               or {}).items():
            tag = tag_for_keyword(keyword)
            kind = r.text(type_node, f"type of {keyword}")
            if tag is None:
                r.error(key_node, f"modules.{name}: {keyword!r} is not a DICOM keyword")
            elif kind not in ATTRIBUTE_TYPES:
                r.error(type_node, f"modules.{name}.{keyword}: type must be one of {', '.join(ATTRIBUTE_TYPES)}")
            elif kind != "3":
                entries.append((tag, int(kind[0])))
        modules[name] = entries
    out: list[IodTypes] = []
    for item in r.items(top["iods"][1], "iods") if "iods" in top else []:
        m = r.mapping(item, "iods entry") or {}
        for key, (key_node, _v) in m.items():
            if key not in ("name", "section", "sop_classes", "modules", "note"):
                r.error(key_node, f"iods entry: unknown key {key!r} (known: modules, name, note, section, sop_classes)")
        if not {"name", "section", "sop_classes", "modules"} <= m.keys():
            r.error(item, "an iods entry needs name, section (PS3.3 A.x), sop_classes and modules")
            continue
        classes = []
        for node in r.items(m["sop_classes"][1], "sop_classes"):
            uid = (r.text(node, "sop_classes entry") or "").strip()
            if not _UID_RE.match(uid):
                r.error(node, f"sop_classes entries are SOP Class UIDs (digits and dots), not {uid!r}")
            classes.append(uid)
        types: dict[int, int] = {}
        for node in r.items(m["modules"][1], "modules"):
            module = r.text(node, "modules entry") or ""
            if module not in modules:
                r.error(node, f"module {module!r} is not defined under 'modules:' in this file")
                continue
            for tag, kind in modules[module]:
                types[tag] = min(kind, types.get(tag, 3))  # the strictest module wins (1 over 2)
        out.append(IodTypes(r.text(m["name"][1], "name") or "", r.text(m["section"][1], "section") or "",
                            tuple(classes), tuple(sorted(types.items())), r.at(item)))
    return out


def _codes(r: _Reader, node: yaml.Node) -> list[MethodCode]:
    out = []
    for item in r.items(node, "codes"):
        m = r.mapping(item, "code")
        if m is None:
            continue
        value = r.text(m["value"][1], "code value") if "value" in m else None
        meaning = r.text(m["meaning"][1], "code meaning") if "meaning" in m else None
        scheme = r.text(m["scheme"][1], "code scheme") if "scheme" in m else "DCM"
        for key, (key_node, _v) in m.items():
            if key not in ("value", "meaning", "scheme"):
                r.error(key_node, f"unknown code key {key!r} (known: value, meaning, scheme)")
        if not value or not meaning:
            r.error(item, "a code needs a value and a meaning (e.g. value: \"113100\")")
            continue
        out.append(MethodCode(value, meaning, scheme or "DCM"))
    return out


def _selector(r: _Reader, m: dict[str, tuple[yaml.Node, yaml.Node]], item: yaml.Node) -> Selector | None:
    present = [k for k in _SELECTORS if k in m]
    if len(present) != 1:
        r.error(item, "a rule needs exactly one of keyword, tag, vr or private"
                + (f" (found {', '.join(present)})" if present else ""))
        return None
    kind = present[0]
    node = m[kind][1]
    if kind == "private":
        if isinstance(node, yaml.ScalarNode):
            if node.value.strip().lower() != "all":
                r.error(node, "private must be 'all' or a mapping with group, creator and element")
                return None
            return Selector("private")
        pm = r.mapping(node, "private")
        if pm is None:
            return None
        for key, (key_node, _v) in pm.items():
            if key not in ("group", "creator", "element"):
                r.error(key_node, f"unknown private key {key!r} (known: group, creator, element)")
        if "group" not in pm or "creator" not in pm:
            r.error(node, "a private selector needs group and creator (element is optional)")
            return None
        try:
            group = _hex(r.text(pm["group"][1], "group") or "", 4, "group")
        except ValueError as exc:
            r.error(pm["group"][1], str(exc))
            return None
        if not group & 1:
            r.error(pm["group"][1], "private groups are odd; this group is even")
            return None
        creator = r.text(pm["creator"][1], "creator")
        if not creator or not creator.strip():
            r.error(pm["creator"][1], "creator must not be empty")
            return None
        element = None
        if "element" in pm:
            raw = r.text(pm["element"][1], "element") or ""
            em = _HEX2.match(raw.strip())
            if not em:
                r.error(pm["element"][1], "element is the low byte within the block: two hex digits, e.g. '23' or 'xx23'")
                return None
            element = int(em.group(1), 16)
        return Selector("private", group=group, creator=normalise_creator(creator), element=element)
    raw = r.text(node, kind)
    if raw is None:
        return None
    if kind == "vr":
        vr = raw.strip().upper()
        if vr not in _VRS:
            r.error(node, f"unknown VR {raw!r}")
            return None
        return Selector("vr", vr=vr)
    if kind == "keyword":
        tag = tag_for_keyword(raw.strip())
        if tag is None:
            r.error(node, f"unknown DICOM keyword {raw!r} (check spelling and case, e.g. PatientName)")
            return None
        return Selector("tag", tag=tag)
    try:
        sel = parse_tag(raw)
    except ValueError as exc:
        r.error(node, str(exc))
        return None
    if sel.kind == "tag" and (sel.tag >> 16) & 1:
        r.error(node, "odd groups are private: use 'private: {group, creator, element}'")
        return None
    return sel


def _rule(r: _Reader, item: yaml.Node) -> Rule | None:
    m = r.mapping(item, "rule")
    if m is None:
        return None
    for key, (key_node, _v) in m.items():
        if key not in _RULE_META and key not in _SELECTORS:
            r.error(key_node, f"unknown rule key {key!r}")
    sel = _selector(r, m, item)
    if "action" not in m:
        r.error(item, f"a rule needs an action ({', '.join(ACTIONS)})")
        return None
    action = r.text(m["action"][1], "action")
    if action not in ACTIONS:
        r.error(m["action"][1], f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        return None
    value = template = None
    max_years = 89
    if action == "replace":
        has_v, has_t = "value" in m, "template" in m
        if has_v == has_t:
            r.error(item, "replace needs exactly one of value or template")
            return None
        if has_v:
            value = r.text(m["value"][1], "value")
        else:
            template = r.text(m["template"][1], "template")
            if template is not None:
                try:
                    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
                except ValueError as exc:
                    r.error(m["template"][1], f"bad template: {exc}")
                    return None
                unknown = fields - TEMPLATE_FIELDS
                if unknown:
                    r.error(m["template"][1], f"unknown template field(s) {sorted(unknown)} "
                            f"(known: {', '.join(sorted(TEMPLATE_FIELDS))})")
                    return None
    else:
        for key in ("value", "template"):
            if key in m:
                r.error(m[key][0], f"{key} is only for the replace action")
    if "max_years" in m:
        if action != "cap_age":
            r.error(m["max_years"][0], "max_years is only for the cap_age action")
        else:
            got = r.integer(m["max_years"][1], "max_years")
            if got is not None:
                if not 1 <= got <= 998:
                    r.error(m["max_years"][1], "max_years must be between 1 and 998")
                max_years = got
    if sel is None:
        return None
    if sel.kind == "private" and action in ("shift_date", "remap_uid", "cap_age", "pseudonym"):
        r.warnings.append(Problem(r.at(item), f"{action} on a private element applies only if its VR is explicit"))
    meta = {k: (r.text(m[k][1], k) or "") for k in ("note", "table", "row", "name") if k in m}
    return Rule(sel, action, r.at(item), value=value, template=template, max_years=max_years, **meta)


def _when(r: _Reader, node: yaml.Node, what: str) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    m = r.mapping(node, what)
    if m is None:
        return None
    out = []
    for key, (key_node, value_node) in m.items():
        if tag_for_keyword(key) is None:
            r.error(key_node, f"{what}: unknown DICOM keyword {key!r}")
            continue
        values = []
        for v in r.items(value_node, f"{what}.{key}"):
            t = r.text(v, f"{what}.{key} value")
            if t is not None:
                values.append(t.strip())
        if not values:
            r.error(value_node, f"{what}.{key} needs at least one value")
            continue
        out.append((key, tuple(values)))
    if not m:
        r.error(node, f"{what} needs at least one condition")
    return tuple(out) if out and len(out) == len(m) else None


def _filter(r: _Reader, item: yaml.Node) -> Filter | None:
    m = r.mapping(item, "filter")
    if m is None:
        return None
    known = {"id", "when", "action", "reason", "unless_pixel_rule", "note"}
    for key, (key_node, _v) in m.items():
        if key not in known:
            r.error(key_node, f"unknown filter key {key!r} (known: {', '.join(sorted(known))})")
    missing = [k for k in ("id", "when", "action") if k not in m]
    if missing:
        r.error(item, f"a filter needs {', '.join(missing)}")
        return None
    fid = r.text(m["id"][1], "id")
    when = _when(r, m["when"][1], "when")
    action = r.text(m["action"][1], "action")
    if action not in FILTER_ACTIONS:
        r.error(m["action"][1], f"filter action must be one of {', '.join(FILTER_ACTIONS)}")
        return None
    reason = r.text(m["reason"][1], "reason") if "reason" in m else ""
    if action != "accept" and not reason:
        r.error(item, "quarantine and skip filters need a reason code (e.g. burned-in-risk)")
        return None
    if reason and not re.fullmatch(r"[a-z0-9][a-z0-9:._-]*", reason):
        r.error(m["reason"][1], "reason is a code: lower-case letters, digits and : . _ -")
        return None
    unless = r.boolean(m["unless_pixel_rule"][1], "unless_pixel_rule") if "unless_pixel_rule" in m else False
    if when is None or not fid:
        return None
    note = r.text(m["note"][1], "note") if "note" in m else ""
    return Filter(fid, when, action, reason or "", r.at(item), bool(unless), note or "")


def _pixel_rule(r: _Reader, item: yaml.Node) -> PixelRegionRule | None:
    m = r.mapping(item, "pixel region rule")
    if m is None:
        return None
    for key, (key_node, _v) in m.items():
        if key not in ("id", "when", "regions", "note"):
            r.error(key_node, f"unknown pixel region key {key!r} (known: id, when, regions, note)")
    if "id" not in m or "when" not in m or "regions" not in m:
        r.error(item, "a pixel region rule needs id, when and regions")
        return None
    when = _when(r, m["when"][1], "when")
    keys = {k for k, _ in when or ()}
    if when is not None and not keys & {"Manufacturer", "ManufacturerModelName", "DeviceSerialNumber"}:
        r.error(m["when"][1], "a pixel region rule is per device: match Manufacturer and/or ManufacturerModelName")
        when = None
    regions = []
    for reg in r.items(m["regions"][1], "regions"):
        nums = [r.integer(n, "region value") for n in r.items(reg, "region")] if isinstance(reg, yaml.SequenceNode) else []
        if len(nums) != 4 or any(n is None or n < 0 for n in nums) or (nums[2] or 0) <= 0 or (nums[3] or 0) <= 0:
            r.error(reg, "a region is [x, y, width, height] in pixels, width and height above zero")
            continue
        regions.append(tuple(nums))  # type: ignore[arg-type]
    if when is None or not regions:
        return None
    note = r.text(m["note"][1], "note") if "note" in m else ""
    return PixelRegionRule(r.text(m["id"][1], "id") or "", when, tuple(regions), r.at(item), note or "")


def _check_duplicates(r: _Reader, rules: list[Rule]) -> None:
    seen: dict[tuple, Rule] = {}
    for rule in rules:
        k = rule.selector.key()
        if k in seen:
            r.problems.append(Problem(rule.where, f"{rule.selector.text()} is already matched by the rule at line "
                                      f"{seen[k].where.line} of this file; keep one"))
        else:
            seen[k] = rule
