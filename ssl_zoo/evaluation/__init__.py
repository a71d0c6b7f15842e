"""Evaluation protocols for trained encoders."""
