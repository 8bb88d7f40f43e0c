"""Helpers shared by tests: lab memory images and writers for every dump format."""
