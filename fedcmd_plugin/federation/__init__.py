"""Mode-independent federated rounds on top of EasyFL's BaseServer/BaseClient."""
