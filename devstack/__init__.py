"""The embedded development stack: local stand-ins that let the service run on one machine."""
