"""Payload codecs: bytes in, a columnar batch of readings and dead letters out.

Every codec follows :class:`~dte_stream.codecs.base.Codec`: ``decode`` never raises (bad input
becomes :class:`~dte_stream.readings.DeadLetter` items with a reason), ``encode`` is its inverse.
Pick one by name with :func:`get_codec`; ``docs/codecs.md`` describes every accepted form.

>>> codec = get_codec("line_protocol", precision="ms")
>>> codec.name, sorted(CODEC_NAMES)
('line_protocol', ['csv', 'json', 'line_protocol', 'senml'])
"""

from __future__ import annotations

from collections.abc import Callable

from dte_stream.codecs._common import DECODER_BUG, EncodeError
from dte_stream.codecs.base import MAX_PAYLOAD_BYTES, Codec, DecodeContext, DecodeResult
from dte_stream.codecs.csv import CsvCodec
from dte_stream.codecs.json import JsonCodec
from dte_stream.codecs.line_protocol import LineProtocolCodec
from dte_stream.codecs.senml import SenMLCodec
from dte_stream.errors import ConfigError

__all__ = [
    "CODEC_NAMES",
    "DECODER_BUG",
    "MAX_PAYLOAD_BYTES",
    "Codec",
    "CsvCodec",
    "DecodeContext",
    "DecodeResult",
    "EncodeError",
    "JsonCodec",
    "LineProtocolCodec",
    "SenMLCodec",
    "get_codec",
]

_FACTORIES: dict[str, Callable[..., Codec]] = {
    JsonCodec.name: JsonCodec,
    SenMLCodec.name: SenMLCodec,
    LineProtocolCodec.name: LineProtocolCodec,
    CsvCodec.name: CsvCodec,
}

#: The names :func:`get_codec` accepts, in registration order.
CODEC_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_codec(name: str, **options: object) -> Codec:
    """A new codec by name; ``options`` go to its constructor (e.g. line protocol ``precision``).

    Raises :class:`~dte_stream.errors.ConfigError` naming the allowed names or the bad option.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown codec {name!r}; use one of {', '.join(CODEC_NAMES)}")
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"codec {name!r} does not accept these options: {exc}") from None
