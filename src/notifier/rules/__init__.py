"""Routing rules: which events become which notifications, through which channel, when."""
