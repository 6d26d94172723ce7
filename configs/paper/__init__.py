"""One config per row of the paper's Tables 1 and 2."""
