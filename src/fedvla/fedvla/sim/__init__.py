"""Simulated robots, scenes and cameras (MuJoCo / Meta-World): real simulations, not mocks."""
