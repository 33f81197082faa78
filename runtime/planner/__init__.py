"""The memory planner: how many frames and tokens fit on a device."""
