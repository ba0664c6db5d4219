"""Mesh-wide behaviour: the management API, vmodels and their transitions, the leader, copies by rate."""
