"""Blocked categories of personal data (data minimisation at the edge).

A robot needs to know that Alice likes oat milk, not her card number.  Records refuse six
categories outright, by the name of a field and by the shape of a string value:

======================  =======================================  ===========================
category                field names refused                      values refused
======================  =======================================  ===========================
email                   email, e_mail, mail                      ``name@host.tld``
phone                   phone, telephone, mobile, cell, fax      +, or 9-15 digits grouped
address                 address, street, postcode, zip, zipcode  (by field name only)
national id             ssn, national_id, passport, tax_id, ...  ``123-45-6789``
card number             card, card_number, credit_card, iban     13-19 digits passing Luhn
password                password, passwd, pin, secret, ...       (by field name only)
======================  =======================================  ===========================

The error names the field path (``payload.contact.email``) so the caller can fix the record.
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

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_NATIONAL_ID = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
# + and digits with separators; judged by digit count below
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d \-().]{7,22}\d(?![\w.])")
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")


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


#: every blocked value shape holds an ``@`` or three digits in a row; most text holds neither
SUSPECT = re.compile(r"@|\d\d\d")


def blocked_category_of_text(text: str) -> str | None:
    if not SUSPECT.search(text):
        return None
    if _EMAIL.search(text):
        return "email"
    if _NATIONAL_ID.search(text):
        return "national id"
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return "card number"
    for match in _PHONE.finditer(text):
        raw = match.group()
        digits = re.sub(r"\D", "", raw)
        grouped = raw.startswith("+") or any(sep in raw for sep in " -().")
        if 9 <= len(digits) <= 15 and grouped:
            return "phone"
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def check_no_pii(value: object, *, field: str) -> None:
    """Raise `BlockedFieldError` naming the first blocked field found in ``value``."""
    if value is None or isinstance(value, int | float):
        return
    if isinstance(value, str):
        category = blocked_category_of_text(value)
        if category:
            raise BlockedFieldError(
                f"{field} looks like {_article(category)} {category}; hearthsync does not "
                f"store {category}s",
                field=field,
            )
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
            check_no_pii(item, field=path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_no_pii(item, field=f"{field}[{index}]")
