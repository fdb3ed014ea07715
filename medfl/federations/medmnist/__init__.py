"""MedMNIST (PathMNIST by default): npz reading, LDA partitions, the tutorial's CNN, client and server test."""
