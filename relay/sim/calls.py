"""Realistic, seeded call records for the simulated WebFones: directions, dispositions, caller
names (some unicode, some empty) and numbers in the spec's own formats."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

_CNAM = ("B WHITTAKER", "ACME PLUMBING", "J SMITH", "WIRELESS CALLER", "TOLL FREE CALL",
         "RIVERSIDE DENTAL", "M GARCIA", "K OBRIEN", "NORTHWIND LLC", "UNKNOWN")  # fmt: skip
_UNICODE = ("José Nuñez", "Zoë Ashford", "Łukasz Wójcik", "Søren Dahl", "Chloé Lefèvre",
            "Ana María Peña", "Jürgen Groß", "王 芳")  # fmt: skip
_STAFF = ("Alice Park", "Ben Ortiz", "Carla Reyes", "Dev Patel", "Erin Walsh", "Femi Ade",
          "Gus Lind", "Hana Sato")  # fmt: skip
_DIRECTIONS = ("INCOMING", "OUTGOING", "INTERNAL")
_DISPOSITIONS = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "VOICEMAIL")
_QUEUES = ("", "", "", "Sales", "Support", "Billing")


def _outside_number(rng: random.Random) -> str:
    return f"(555) 01{rng.randint(0, 9)}-{rng.randint(0, 9999):04d}"


def make_call(
    rng: random.Random,
    rid: int,
    stamp: str,
    started: datetime,
    main_number: str,
    extensions: list[str],
) -> dict[str, Any]:
    """One record as the API returns it, stamped ``stamp`` (the call's start, in API form)."""
    direction = rng.choices(_DIRECTIONS, weights=(55, 35, 10))[0]
    disposition = rng.choices(_DISPOSITIONS, weights=(70, 12, 5, 3, 10))[0]
    if direction != "INCOMING" and disposition == "VOICEMAIL":
        disposition = "ANSWERED"
    billsec = int(rng.expovariate(1 / 150)) + 1 if disposition in ("ANSWERED", "VOICEMAIL") else 0
    ext = rng.choice(extensions)
    if direction == "INTERNAL":
        name, number = rng.choice(_STAFF), rng.choice(extensions)
    else:
        roll = rng.random()
        name = rng.choice(_UNICODE) if roll < 0.15 else "" if roll < 0.2 else rng.choice(_CNAM)
        number = _outside_number(rng)
    uniqueid = f"{int(started.timestamp())}.{rid % 100_000}"
    answered = disposition == "ANSWERED"
    return {
        "rid": rid,
        "call_timestamp": stamp,
        "cidname_outside": name,
        "cidext_inside": ext,
        "direction": direction,
        "cidnumber_outside": number,
        "cidnumber_inside": f"{main_number}, x{ext}",
        "disposition": disposition,
        "duration": billsec + rng.randint(0, 25),
        "billsec": billsec,
        "uniqueid": uniqueid,
        "recording": f"{uniqueid}.wav" if answered and rng.random() < 0.4 else "",
        "queue": rng.choice(_QUEUES) if direction == "INCOMING" else "",
        "did": main_number if direction == "INCOMING" else "",
    }
