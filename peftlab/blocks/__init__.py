"""Building blocks shared by the methods: target matching, the low-rank path, parameter accounting."""
