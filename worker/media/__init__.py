"""Getting video bytes (sources) and frames out of them (decode)."""
