"""The VLA policy: HPT-style stems → trunk (with MoE feed-forward layers) → action head."""
