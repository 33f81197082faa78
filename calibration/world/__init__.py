"""The synthetic video world (scenes with known answers), its videos and the eval command."""
