"""Request body parsers with the limits every body obeys (README "Limits")."""

import io

from rest_framework import exceptions, parsers

from core.specs import MAX_NESTING, SpecError, check_json_nesting


class BoundedJSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than MAX_NESTING levels with a 400.

    Python's JSON parser recurses, so a thousand nested lists would otherwise raise RecursionError (a
    500). The body's size is already bounded by DATA_UPLOAD_MAX_MEMORY_SIZE (a 413 beyond it).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        encoding = parsers.get_encoding(parser_context or {})
        try:
            check_json_nesting(raw.decode(encoding, errors="replace"))
        except SpecError:
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {MAX_NESTING} levels") from None
        return super().parse(io.BytesIO(raw), media_type, parser_context)
