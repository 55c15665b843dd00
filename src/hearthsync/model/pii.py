"""Blocked categories of personal data (data minimisation at the edge).

A robot needs to know that Alice likes oat milk, not her card number.  Records refuse six
categories outright, by the name of a field and by the shape of a string value:

======================  =======================================  ===========================
category                field names refused                      values refused
======================  =======================================  ===========================
email                   email, e_mail, mail                      ``name@host.tld``
phone                   phone, telephone, mobile, cell, fax      9-15 digits after +,
                                                                 grouped, or after a 0
                                                                 trunk prefix (`_is_phone`)
address                 address, street, postcode, zip, zipcode  (by field name only)
national id             ssn, national_id, passport, tax_id, ...  ``123-45-6789``
card number             card, card_number, credit_card, iban     13-19 digits passing Luhn
password                password, passwd, pin, secret, ...       (by field name only)
======================  =======================================  ===========================

The error names the field path (``payload.contact.email``) so the caller can fix the record.
Phone numbers are found in the common groupings (``+33 6 12 34 56 78``, ``06 12 34 56 78``,
``(415) 555-0100``) and ungrouped after a trunk or international prefix (``0612345678``,
``0033612345678``); an ungrouped number without one (``4155550100``) is not told apart
from other runs of digits, and passes.  Dates, times, IPv4 addresses, versions and lists of
small numbers (``sizes 38 39 40 41 42``) are not phone numbers.  Characters that show
nothing (a zero-width space, a soft hyphen) are left out before matching.  Numbers (an int or
a float) are not strings and are not checked; nor are the peer's own fields (clocks, device
ids) or ``evidence`` (event ids and the slow loop's markers, by pattern).  An error that could
repeat a value shaped like one of these says so instead (`quoted`).
"""

from __future__ import annotations

import re

from hearthsync.errors import BlockedFieldError

_BLOCKED_NAMES: dict[str, str] = {}
for _category, _names in {
    "email": ("email", "e_mail", "mail", "email_address"),
    "phone": ("phone", "telephone", "phone_number", "mobile", "cell", "fax"),
    "address": (
        "address",
        "street",
        "street_address",
        "home_address",
        "postcode",
        "zip",
        "zipcode",
        "postal_code",
    ),
    "national id": (
        "ssn",
        "national_id",
        "passport",
        "passport_number",
        "tax_id",
        "social_security",
        "social_security_number",
        "id_number",
    ),
    "card number": ("card", "card_number", "credit_card", "creditcard", "iban", "cvv"),
    "password": ("password", "passwd", "passphrase", "pin", "secret", "api_key", "token"),
}.items():
    for _name in _names:
        _BLOCKED_NAMES[_name] = _category

#: characters that show nothing: between the digits of a phone number or around an email's
#: "@", they hid it from every pattern (found in review), so they are left out before matching
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
_STRIP_INVISIBLE = str.maketrans("", "", _INVISIBLE)
#: the cheap test first, as most text holds no digits: an ``@``, or a digit and 7 more
#: characters of digits, separators and invisible characters, which every shape below starts
#: with (so this skips nothing they would find:
#: ``test_the_cheap_test_skips_nothing_a_detector_finds``).  Spelled to start with a
#: character set, which ``re`` skips to faster than to an alternative
SUSPECT = re.compile(rf"[@\d](?:(?<=@)|[\d \-().{_INVISIBLE}]{{7}})")

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_NATIONAL_ID = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
# + and digits with separators; judged by `_is_phone`
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d \-().]{7,22}\d(?![\w.])")
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
#: dates with a 4-digit year, masked before looking for phone numbers: the digits of
#: "2026-03-14 08:30" would otherwise run on into the hour
_DATE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d\d-[01]?\d-[0-3]?\d|[0-3]?\d[./\-][01]?\d[./\-](?:19|20)\d\d)(?!\d)"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_DIGITS = re.compile(r"\d+")


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def blocked_category_of_name(name: str) -> str | None:
    return _BLOCKED_NAMES.get(_normal(name))


def blocked_category_of_text(text: str) -> str | None:
    return _category_of_text(text) if SUSPECT.search(text) else None


def _category_of_text(text: str) -> str | None:
    """The blocked category ``text`` holds a value of, by shape alone (no cheap test first)."""
    if not text.isascii():
        text = text.translate(_STRIP_INVISIBLE)
    if "@" in text and _EMAIL.search(text):
        return "email"
    if _NATIONAL_ID.search(text):
        return "national id"
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return "card number"
    for match in _PHONE.finditer(_DATE.sub("#", text)):
        if _is_phone(match.group()):
            return "phone"
    return None


def _is_phone(raw: str) -> bool:
    """Whether ``raw``, digits and separators, is a phone number: 9-15 digits (E.164 holds
    at most 15) after a ``+`` (``+33 6 12 34 56 78``), or grouped.  Grouped digits are not one
    when they are an IPv4 address, or groups of at most 2 digits not led by a ``0``: a list of
    small numbers (``38 39 40 41 42``), where a number grouped in pairs starts with its trunk
    prefix (``06 12 34 56 78``) or its country code."""
    groups = _DIGITS.findall(raw)
    if not 9 <= sum(map(len, groups)) <= 15:
        return False
    if raw.startswith("+"):
        return True
    if raw.isdigit():  # ungrouped: a number dialled with its trunk prefix (0612345678,
        # 02079460958) or international one (0033612345678); other runs of digits (ids,
        # seconds since 1970, a North American number written without spaces) are let be
        return (raw[0] == "0" and raw[1] != "0" and len(raw) in (10, 11)) or (
            raw.startswith("00") and raw[2] != "0" and len(raw) >= 11
        )
    if not any(sep in raw for sep in " -().") or _IPV4.fullmatch(raw):
        return False
    if set(_DIGITS.sub("", raw)) == {"."} and min(map(len, groups)) == 1:
        return False  # a version (10.2.33.4455): dotted phone numbers have no 1-digit group
    return groups[0].startswith("0") or max(map(len, groups)) > 2


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def blocked_text_error(text: str, *, field: str) -> BlockedFieldError | None:
    """The error refusing ``text`` in ``field`` if it holds personal data, naming the field
    and never repeating the text (errors get logged); else None."""
    category = blocked_category_of_text(text)
    if not category:
        return None
    return BlockedFieldError(
        f"{field} looks like {_article(category)} {category}; hearthsync does not store "
        f"{category}s",
        field=field,
    )


def quoted(value: object, limit: int = 40) -> str:
    """``value`` as an error message may show it: its ``repr`` (cut to ``limit``), unless it
    is text shaped like personal data, which errors never repeat (they get logged; found in
    review: an id or a timestamp that was a phone number came back word for word)."""
    if isinstance(value, str):
        category = blocked_category_of_text(value)
        if category:
            return f"(a value shaped like {_article(category)} {category}, not repeated)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_no_pii(value: object, *, field: str) -> None:
    """Raise `BlockedFieldError` naming the first blocked field found in ``value``."""
    if value is None or isinstance(value, int | float):
        return
    if isinstance(value, str):
        error = blocked_text_error(value, field=field)
        if error is not None:
            raise error
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}"
            category = blocked_category_of_name(str(key))
            if category:
                raise BlockedFieldError(
                    f"{path} is a blocked field ({category}); hearthsync does not store "
                    f"{category}s",
                    field=path,
                )
            category = blocked_category_of_text(str(key))
            if category:  # a phone number as a key: named without it (errors get logged)
                raise BlockedFieldError(
                    f"a key of {field} looks like {_article(category)} {category}; "
                    f"hearthsync does not store {category}s",
                    field=field,
                )
            check_no_pii(item, field=path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_no_pii(item, field=f"{field}[{index}]")
