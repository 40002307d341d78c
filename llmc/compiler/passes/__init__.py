"""llmc's own passes (ones TVM 0.27 does not ship)."""
