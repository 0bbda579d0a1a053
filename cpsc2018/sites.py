"""Which source database (site) a record comes from, found from the record itself.

The PhysioNet/CinC 2020-2021 challenges name every record with a prefix that identifies its source
database (Perez Alday et al., Physiol. Meas. 41:124003, 2020; Reyna et al., CinC 2021). These sources
are the natural federated clients: each is a different hospital group, country and device.
"""

from __future__ import annotations

import re

# Longest prefix first: "HR" must win over a one-letter prefix.
CHALLENGE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("HR", "PTB-XL"),
    ("JS", "Chapman/Ningbo"),
    ("A", "CPSC2018"),
    ("Q", "CPSC-Extra"),
    ("E", "Georgia"),
    ("S", "PTB"),
    ("I", "INCART"),
)

UNKNOWN_SITE = "unknown"


def site_of_challenge_record(record_id: str) -> str:
    """Site of a PhysioNet/CinC challenge record from its name (``A0001`` -> ``CPSC2018``)."""
    match = re.match(r"([A-Za-z]+)\d+$", record_id)
    if match:
        prefix = match.group(1).upper()
        for known, site in CHALLENGE_PREFIXES:
            if prefix == known:
                return site
    return UNKNOWN_SITE
