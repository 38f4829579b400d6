"""Notifications: one message to one recipient at one time, and its delivery."""
