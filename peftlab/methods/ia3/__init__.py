"""The ia3 method (``method.py``, its layer ``layer.py``): registered in ``METHODS`` on import."""
