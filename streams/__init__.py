"""EzAigent Streams: the Faust stream processors and the ``ezstream`` CLI."""
