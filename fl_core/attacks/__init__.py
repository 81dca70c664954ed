"""Attack plug-ins, chosen by name through `fl_core.registry`."""
