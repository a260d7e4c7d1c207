"""Running compressed models: the BitStack linear module, budgets, loading."""
