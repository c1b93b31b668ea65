"""Keep credentials out of every message: the password in a URL is replaced by ``****``.

Specs hold secrets as ``SecretStr`` and messages name servers without credentials; this is
the net under that: anything a command prints about a URL (a spec value that failed
validation, a driver message quoting an address) passes :func:`redact` first.

>>> redact("'mqtx://user:secret@host:1883' is not an MQTT url")
"'mqtx://user:****@host:1883' is not an MQTT url"
>>> redact("kafka://broker:9092/topic stays as it is")
'kafka://broker:9092/topic stays as it is'
"""

from __future__ import annotations

import re

__all__ = ["redact"]

#: ``scheme://user:password@`` (any scheme: a wrong one is exactly when it gets printed).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s'\"]*):(?P<password>[^@/\s'\"]+)@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``****``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:****@", text)
