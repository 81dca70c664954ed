"""Defense plug-ins, chosen through `fl_core.registry`."""
