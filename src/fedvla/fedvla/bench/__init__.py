"""Measurements behind ``fedvla bench``: each module times one part (policy, federation, IOSP,
IK) and returns figures; the CLI prints them. Top of the core layers: a bench may use anything."""
