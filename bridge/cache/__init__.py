"""A cache of synthesized studies: freshness rules, backends (in-process, Redis), the read-through cache."""
