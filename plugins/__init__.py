"""aigw's built-in plugins, installed as ``aigw_plugins`` and declared as entry points in the
group ``aigw.plugins`` exactly like third-party plugins."""
