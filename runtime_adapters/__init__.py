"""Runtime adapters: implement the mmesh.ModelRuntime SPI in front of real model servers."""
