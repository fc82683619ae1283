"""Configuration: the recipe schema and its shared sections, the YAML loader, settings fields, cluster profiles and
the registry of shipped recipes."""
