"""Tools that run nodes as processes and measure them (``fedvla bench transfer``, ``fedvla soak``);
not nodes of the graph themselves."""
