"""Hosts that resolve backends at model load: adapters for model libraries (optional extras)."""
