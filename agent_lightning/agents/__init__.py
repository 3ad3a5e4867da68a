"""Agents that act: environments, experts, rollouts, evaluation in environments and DAgger."""
