"""Raw-HTTP tests of a real `arker serve` on loopback."""
