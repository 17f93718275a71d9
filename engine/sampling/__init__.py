"""Sample images: prompts in kohya's format, FLUX flow-matching sampling, comparison grids."""
