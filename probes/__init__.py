"""KL probe (tier 0): teacher-forced log-prob comparison. Built in its own issue."""
