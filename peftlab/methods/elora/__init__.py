"""The elora method (``method.py``): registered in ``peftlab.registry.METHODS`` on import."""
