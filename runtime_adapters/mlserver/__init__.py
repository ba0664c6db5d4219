"""ModelRuntime adapter in front of a Seldon MLServer process."""
