"""Delivery channels: one module each, all behind :class:`notifier.channels.base.Channel`."""
