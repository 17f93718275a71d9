"""Dataset folders (`10_name` repeat folders), image decoding, preparation and WD14 tagging."""
