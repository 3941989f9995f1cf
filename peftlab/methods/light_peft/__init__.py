"""The light_peft method (``method.py``): registered in ``peftlab.registry.METHODS`` on import."""
