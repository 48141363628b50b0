"""Federated training: aggregation maths (EDA, FedAvg), protocol state, transports."""
