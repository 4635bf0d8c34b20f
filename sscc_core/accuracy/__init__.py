"""Layer 6 of ``sscc_core``: the accuracy protocol harness (one scene, method, protocol, seed) and
the accuracy suite over every bundled scene."""
