"""Instruction-Oriented Scene Parsing (FedVLA section 3.1): instruction → target objects,
detections, Target / Surrounding / Background groups, and group-selected visual tokens."""
