"""The page's parts, one module each: the Configuration bar, the option tabs, dataset preparation,
utilities and the training panel. Each part builds its components (in page order) and wires its
events once every option widget exists (`wire`)."""
