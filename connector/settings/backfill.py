"""The ``[backfill]`` configuration section: when and how gently studies are pulled from the PACS.

```toml
[backfill]
window = "20:00-06:00"        # the daemon retrieves only inside this local-time window
max_concurrent = 2            # retrievals (associations) at once
series_threshold = 1000       # a larger study is retrieved series by series ...
series_in_flight = 2          # ... this many series at once
instances_per_minute = 0      # optional cap over all retrievals; 0 = none
daily = false                 # true: every night, query the previous days with the filters below
```

Why a window by default: a PACS serves the wards during the day; a backfill of years must never
slow down a radiologist's viewer. ``site-connector backfill run JOB`` ignores the window (an
operator chose the moment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from connector.settings.fields import check, setting
from connector.settings.registry import valid_window


def _valid_regex(value: str) -> bool:
    try:
        re.compile(value)
        return True
    except re.error:
        return False


@dataclass(frozen=True)
class BackfillConfig:
    window: str = setting("20:00-06:00", check(valid_window, "must be HH:MM-HH:MM (local time) or empty"),
                          doc="the daemon retrieves queued backfill studies only inside this daily local-time "
                              "window; empty = any time (`backfill run` ignores it)")
    max_concurrent: int = setting(2, check(lambda v: 1 <= v <= 16, "must be between 1 and 16"),
                                  doc="studies retrieved at once (one association each)")
    instances_per_minute: int = setting(0, check(lambda v: v >= 0, "must be zero or more"),
                                        doc="cap on instances retrieved per minute over all retrievals; 0 = no cap")
    max_attempts: int = setting(5, check(lambda v: 1 <= v <= 100, "must be between 1 and 100"),
                                doc="a study that fails or comes back incomplete is tried this many times, then "
                                    "reported failed")
    retry_backoff_seconds: float = setting(300.0, check(lambda v: v >= 0, "must be zero or more"),
                                           doc="wait before the first retry; doubles with each further attempt")
    series_threshold: int = setting(1000, check(lambda v: v >= 0, "must be zero or more"),
                                    doc="a study with more instances than this (the C-FIND's count) is retrieved "
                                        "series by series, series_in_flight at once; 0 = always whole studies")
    series_in_flight: int = setting(2, check(lambda v: 1 <= v <= 8, "must be between 1 and 8"),
                                    doc="series of one large study retrieved at once (one association each, on "
                                        "top of max_concurrent)")
    poll_seconds: float = setting(30.0, check(lambda v: v > 0, "must be positive"),
                                  doc="how often the daemon looks for queued backfill work")
    daily: bool = setting(False, doc="every night, query the PACS for the previous days' studies matching "
                                     "the filters below and queue them (for a PACS that cannot route)")
    daily_days: int = setting(2, check(lambda v: 1 <= v <= 31, "must be between 1 and 31"),
                              doc="daily mode looks back this many days before today (overlap is harmless: "
                                  "studies already queued or received are skipped)")
    modalities: list[str] = setting(
        [], check(lambda v: all(re.fullmatch(r"[A-Z]{2,4}", m) for m in v), "every entry must be a modality code such as PT or CT"),
        doc="daily mode: only studies with one of these modalities; empty = any",
    )
    description: str = setting("", check(_valid_regex, "must be a valid regular expression"),
                               doc="daily mode: only studies whose Study Description matches this regex "
                                   "(case-insensitive); empty = any")
