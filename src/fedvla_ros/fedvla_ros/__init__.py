"""Thin rclpy nodes: each declares its parameters, builds a core object and moves messages."""
