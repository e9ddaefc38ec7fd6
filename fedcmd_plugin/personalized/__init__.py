"""Shared machinery for personalized FL: which state-dict keys stay on the client and which are aggregated."""
