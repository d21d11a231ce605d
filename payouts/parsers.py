"""A JSON parser that keeps numbers exact.

DRF's JSONParser turns `10.1` into a float, which has already lost the amount
the client wrote (and `1e309` into infinity). Parsing every JSON number with a
fractional part or exponent as a Decimal keeps the literal exactly, so
core.money.parse_usd can judge it (too precise, too large, not finite) as it
judges a decimal string. `NaN` and `Infinity` become Decimal values too, so
they are refused with the same money message instead of a parser error.
"""

import codecs
import json
from decimal import Decimal

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding


class DecimalJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            decoded = codecs.getreader(encoding)(stream)
            return json.load(decoded, parse_float=Decimal, parse_constant=Decimal)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
