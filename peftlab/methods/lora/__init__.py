"""The lora method (``method.py``): registered in ``peftlab.registry.METHODS`` on import."""
