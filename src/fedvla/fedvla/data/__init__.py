"""Datasets: episodes (camera views, proprioception, instruction, action chunks)."""
