"""A profile: rule files resolved with their includes into one ordered list of rules and filters.

Load order defines "later": each file's includes are loaded first (depth first, in the order
listed), then the file's own content. A file reached twice is loaded once, at its first place, so
option files can each include the basic profile and still be combined. Same-level precedence
(``docs/rules.md``) then says the later rule wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from connector.deid.rulefile import (
    Filter,
    Location,
    MethodCode,
    PixelRegionRule,
    Problem,
    Rule,
    RuleFile,
    RuleFileError,
    parse_rule_file,
)
from connector.shipped import ENV_RULES_DIR, shipped_rules_dir  # noqa: F401  (re-exported)

DEFAULT_RULES_NAME = "registry-default.yaml"
ATTRIBUTE_TYPES_NAME = "iod-attribute-types.yaml"  # PS3.3 types per IOD; always loaded (docs/rules.md)


def default_rules_path() -> Path:
    return shipped_rules_dir() / DEFAULT_RULES_NAME


def resolve_rule_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A rule file named by path, relative to the including file, or by its shipped name."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    candidates = ([relative_to / p] if relative_to is not None else []) + [Path.cwd() / p, shipped_rules_dir() / p]
    if p.suffix not in (".yaml", ".yml"):
        candidates.append(shipped_rules_dir() / (str(p) + ".yaml"))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return candidates[0]


@dataclass(frozen=True)
class OrderedRule:
    rule: Rule
    order: int  # position in the load order; higher is later


@dataclass(frozen=True)
class Profile:
    """Everything the engine needs from the rule files, flattened in load order."""

    files: tuple[RuleFile, ...]
    rules: tuple[OrderedRule, ...]
    filters: tuple[Filter, ...]
    pixel_regions: tuple[PixelRegionRule, ...]
    defaults: dict[str, tuple[str, Location | None]]
    codes: tuple[MethodCode, ...]
    methods: tuple[str, ...]
    # SOP classes that may leave, added up over the files (None: no file lists any, no class check)
    object_classes: frozenset[str] | None = None
    # SOP Class UID -> {tag: 1 or 2}: PS3.3 types of the IOD's top-level attributes (``iods:``), from
    # the shipped iod-attribute-types.yaml and any loaded file; absent class: types unknown
    attribute_types: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.files[-1].name if self.files else "empty"

    @property
    def code_values(self) -> frozenset[str]:
        return frozenset(c.value for c in self.codes)

    def permitted_sop_classes(self) -> frozenset[str] | None:
        """Every class that may leave: the object-class lists plus the classes a filter accepts;
        None when no loaded file lists object classes (a bare PS3.15 profile)."""
        if self.object_classes is None:
            return None
        return self.object_classes | self.accepted_sop_classes()

    def accepted_sop_classes(self) -> frozenset[str]:
        """SOP classes a filter explicitly lets through (``action: accept`` naming SOPClassUID): the
        only way a class that can carry identifiers in its pixels or document gets past the guard."""
        return frozenset(uid for f in self.filters if f.action == "accept"
                         for keyword, values in f.when if keyword == "SOPClassUID" for uid in values)


BUILTIN_DEFAULTS: dict[str, tuple[str, Location | None]] = {
    # Standard attributes the profile does not list are kept (as PS3.15 intends); tags the data
    # dictionary does not know are removed (fail closed).
    "unlisted": ("keep", None),
    "unknown": ("remove", None),
}


def load_profile(paths: Sequence[str | Path] | None = None) -> Profile:
    """Load rule files (default: the shipped ``registry-default.yaml``) with their includes.

    Raises :class:`RuleFileError` with every problem found in every file.
    """
    roots = [resolve_rule_path(p) for p in paths] if paths else [default_rules_path()]
    loaded: list[RuleFile] = []
    seen: set[Path] = set()
    problems: list[Problem] = []

    def visit(path: Path, chain: tuple[Path, ...], where: Location | None) -> None:
        path = path.resolve() if path.exists() else path
        if path in chain:
            problems.append(Problem(where or Location(path.name, 0), f"include cycle through {path.name}"))
            return
        if path in seen:
            return
        seen.add(path)
        if not path.is_file():
            problems.append(Problem(where or Location(str(path), 0), f"rule file not found: {path.name}"))
            return
        try:
            rf = parse_rule_file(path)
        except RuleFileError as exc:
            problems.extend(exc.problems)
            return
        for name, loc in rf.includes:
            visit(resolve_rule_path(name, path.parent), chain + (path,), loc)
        loaded.append(rf)

    for root in roots:
        visit(root, (), None)
    if problems:
        raise RuleFileError(problems)

    rules: list[OrderedRule] = []
    filters: dict[str, Filter] = {}  # dict keeps first position; a later file replaces the content
    regions: dict[str, PixelRegionRule] = {}
    defaults = dict(BUILTIN_DEFAULTS)
    codes: dict[str, MethodCode] = {}
    methods: list[str] = []
    classes: set[str] | None = None
    types: dict[str, dict[int, int]] = {}
    shipped_types = shipped_rules_dir() / ATTRIBUTE_TYPES_NAME
    sources = loaded if any(rf.path.resolve() == shipped_types.resolve() for rf in loaded) or \
        not shipped_types.is_file() else [parse_rule_file(shipped_types), *loaded]
    for rf in sources:
        for iod in rf.iods:
            for sop_class in iod.sop_classes:
                table = types.setdefault(sop_class, {})
                for tag, kind in iod.types:
                    table[tag] = min(kind, table.get(tag, 3))  # files add up; the strictest type wins
    for rf in loaded:
        if rf.object_classes is not None:
            classes = (classes or set()) | set(rf.object_classes)
        for key, action, where in rf.defaults:
            defaults[key] = (action, where)
        for rule in rf.rules:
            rules.append(OrderedRule(rule, len(rules)))
        for f in rf.filters:
            filters[f.id] = f
        for p in rf.pixel_regions:
            regions[p.id] = p
        for c in rf.codes:
            codes.setdefault(c.value, c)
        if rf.method and rf.method not in methods:
            methods.append(rf.method)
    return Profile(
        files=tuple(loaded),
        rules=tuple(rules),
        filters=tuple(filters.values()),
        pixel_regions=tuple(regions.values()),
        defaults=defaults,
        codes=tuple(codes.values()),
        methods=tuple(methods),
        object_classes=None if classes is None else frozenset(classes),
        attribute_types=types,
    )
