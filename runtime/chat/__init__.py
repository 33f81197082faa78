"""The conversation: prompts, turns, answer streams and the assistant."""
