"""The real SDK against a real `arker serve` on loopback."""
