"""HTTP framing: the bytes on the wire before they are an image.

Everything here is bounded by the connection's own budgets: header size and count, body size, the
read deadline, authentication. Nothing in this layer parses image bytes; it hands a bounded body to
`service.pipeline`, which sends it to `service.intake` to be parsed under the decode budgets.
"""
