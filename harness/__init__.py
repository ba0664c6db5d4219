"""Development and test tooling (not the mesh): a local mesh as child processes, and the demo."""
