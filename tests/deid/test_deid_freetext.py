"""The allow-list cleaner, the guard's own free-text check, and how the two agree.

The cleaner keeps a token only when it is known to be safe; the guard, with code of its own,
refuses any retained free text that holds something it does not know. A property test drives both
with generated text: whatever the cleaner writes, the guard accepts (so clean objects are never
quarantined by a disagreement), and whatever dangerous shape goes in never comes out.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.deid.freetext import REDACTED, AllowListCleaner
from connector.phi_guard.freetext import free_text_problem, is_free_text
from connector.vocabulary import load_vocabulary

VOCABULARY = load_vocabulary()


def clean(text: str, deny: tuple[str, ...] = ()) -> str:
    return AllowListCleaner(VOCABULARY, deny).clean(text)


@pytest.mark.parametrize("text", [
    "CTAC 3mm B30f 120kV 0.5", "Cardiac PET N-13 ammonia rest", "F-18 flurpiridaz stress", "Tc-99m sestamibi SPECT",
    "Rb-82 PET/CT rest stress", "Regadenoson stress 0.4 mg", "CT 3.75 mm 1.25 mm", "Calcium Score 3.0 B35f",
    "PET AC OSEM 3i24s", "Low Dose CT AC", "SPECT MPI rest gated",
])
def test_descriptions_made_of_known_words_pass_unchanged(text: str) -> None:
    assert clean(text) == text
    assert free_text_problem(text, VOCABULARY, frozenset()) is None


@pytest.mark.parametrize("phone", ["555-0199", "(555) 867-5309", "+1 555 867 5309", "555.867.5309",
                                   "+44 20 7946 0958", "07700 900123", "0171 946 0958", "5558675309"])
def test_phone_numbers_in_every_format_go(phone: str) -> None:
    out = clean(f"PET rest call {phone} today")
    assert not any(ch.isdigit() for ch in out), out
    assert free_text_problem(f"PET rest {phone}", VOCABULARY, frozenset()) is not None


@pytest.mark.parametrize("date", ["2024-03-12", "12/03/2024", "3/12/24", "12.03.24", "12 Mar 2024", "12-MAR-2024",
                                  "March 12, 2024", "12th of March", "Mar 2024", "20240312", "12/03"])
def test_dates_in_every_rendering_go(date: str) -> None:
    out = clean(f"CT rest {date} AC")
    assert out.startswith("CT rest ***") and out.endswith("AC") and not any(c.isdigit() for c in out), out
    assert free_text_problem(f"CT {date}", VOCABULARY, frozenset()) is not None


@pytest.mark.parametrize("text", ["john.doe@example.com", "see https://intranet.local/pt", "www.hospital.org",
                                  "visit hosp.nhs.uk", "SW1A 1AA", "K1A 0B1", "90210", "MRN 48151623",
                                  "ACC-99887766", "10:30", "1234"])
def test_addresses_codes_and_identifier_shapes_go(text: str) -> None:
    out = clean(f"PET {text}")
    assert out == f"PET {REDACTED}", out


def test_unknown_words_names_and_other_scripts_are_replaced() -> None:
    assert clean("Patient DOE called about QUIXOTIC") == "Patient *** called ***"
    assert clean("MÜLLER heart") == "*** heart"
    assert clean("山田 heart") == "*** heart"


def test_known_identifiers_go_even_when_they_are_vocabulary_words() -> None:
    assert "HEART" in VOCABULARY
    assert clean("CT HEART score", deny=("HEART",)) == "CT *** score"


def test_the_guard_sees_names_of_the_study_in_free_text() -> None:
    assert free_text_problem("CT rest WOMBAT", VOCABULARY, frozenset({"WOMBAT"})) == "name"
    assert free_text_problem("CT rest heart", VOCABULARY, frozenset({"HEART"})) == "name"


def test_what_is_free_text_for_the_guard() -> None:
    assert is_free_text(0x00081030, "LO")  # StudyDescription
    assert is_free_text(0x00204000, "LT")  # ImageComments
    assert is_free_text(0x0040A160, "UT")  # TextValue (SR TEXT items)
    assert not is_free_text(0x00080070, "LO")  # Manufacturer: an identifier check's business
    assert not is_free_text(0x00189373, "ST", device_text=False)  # a device label under Retain Device Identity
    assert not is_free_text(0x00191010, "LO")  # private


_words = st.sampled_from(sorted(VOCABULARY))
_dangers = st.sampled_from(["555-0199", "(555) 867-5309", "+1 555 867 5309", "12/03/2024", "March 12, 2024",
                            "2024-03-12", "john@x.org", "SW1A 1AA", "48151623", "WOMBATSON", "MÜLLER", "山田",
                            "10:30", "www.x.com", "12 Mar 2024"])
_noise = st.text(alphabet=st.sampled_from(list("abcXYZ0123456789 -/.,:()+@éü")), max_size=12)
_separator = st.sampled_from([" ", "  ", "/", "-", ", ", "_", " (", ") "])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_words, _dangers, _noise), min_size=1, max_size=12), st.lists(_separator, min_size=12,
                                                                                         max_size=12))
def test_whatever_the_cleaner_writes_the_guard_accepts(parts: list[str], separators: list[str]) -> None:
    text = "".join(p + s for p, s in zip(parts, separators, strict=False))
    out = AllowListCleaner(VOCABULARY, ("WOMBATSON",)).clean(text)
    assert free_text_problem(out, VOCABULARY, frozenset({"WOMBATSON"})) is None, (text, out)
    for danger in ("555", "0199", "2024", "@", "WOMBATSON", "MÜLLER", "山田", "48151623", "SW1A", "10:30", "www"):
        if danger in text:
            assert danger not in out, (text, out)
