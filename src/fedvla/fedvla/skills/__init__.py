"""Skill-centric federation: residual skills on a frozen base policy, a task router, a versioned
skill library, and per-skill aggregation (issue 25; ../shared/papers/skill-centric-fl.md)."""
