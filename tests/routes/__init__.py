"""The `Routes` conformance suite: one behaviour, both route stores."""
