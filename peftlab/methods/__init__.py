"""PEFT methods. Each module registers one method in ``peftlab.registry.METHODS``; each has a YAML in
``conf/method``. ``base`` defines the hooks the training loop calls."""
