"""Events: what producers publish, and their processing into notifications."""
